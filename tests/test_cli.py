"""The command line end to end on a tiny config: train, resume, sample, chain, plot, and its errors."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_config, train_tiny_run
from PIL import Image

from diffsat.cli import main

TINY = tiny_config()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("cli"), TINY)


def test_train_writes_a_run_directory(run_dir: Path) -> None:
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["train"]["max_steps"] == 4 and saved["model"]["base_channels"] == 8
    assert (run_dir / "ema.safetensors").is_file() and (run_dir / "loss.png").is_file()


def test_resume_continues_with_overrides(run_dir: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--resume", "--out", str(copy), "--set", "train.max_steps=6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {copy} from step 4 ({copy / 'checkpoints' / 'step-0000004'})" in out
    assert "trained 6 steps" in out


def test_sample_writes_pngs_and_a_grid(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "samples"
    assert main(["sample", str(run_dir), "--out", str(out), "--n", "5", "--steps", "3", "--batch-size", "2",
                 "--sampler", "ddim", "--grid", "2"]) == 0
    assert sorted(p.name for p in out.glob("sample_*.png")) == [f"sample_{i:05d}.png" for i in range(5)]
    with Image.open(out / "sample_00003.png") as img:
        assert img.size == (28, 28) and img.mode == "L"
    with Image.open(out / "grid.png") as grid:
        assert grid.size[0] > 2 * 28
    assert "5 images in" in capsys.readouterr().out


def test_sample_is_reproducible_per_seed(run_dir: Path, tmp_path: Path) -> None:
    for name, bs in (("a", "4"), ("b", "1")):
        main(["sample", str(run_dir), "--out", str(tmp_path / name), "--n", "4", "--steps", "3", "--seed", "7",
              "--batch-size", bs, "--precision", "fp32"])  # auto may choose differently per batch size
    for i in range(4):
        a = (tmp_path / "a" / f"sample_{i:05d}.png").read_bytes()
        assert a == (tmp_path / "b" / f"sample_{i:05d}.png").read_bytes()


def test_chain_and_plot(run_dir: Path, tmp_path: Path) -> None:
    assert main(["chain", str(run_dir), "--out", str(tmp_path / "chain.png"), "--n", "2", "--steps", "10",
                 "--frames", "11"]) == 0
    assert (tmp_path / "chain.png").stat().st_size > 1000
    assert main(["plot", str(run_dir)]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "missing.json", "--out", "x"], "missing.json: config file not found"),
        (["train", "--out", "nowhere"], "give a CONFIG"),
        (["sample", "no/such/run", "--out", "x"], "no/such/run: checkpoint file not found"),
        (["chain", "RUN", "--out", "c.png", "--frames", "50", "--steps", "10"], "--frames must be between 2"),
        (["plot", "no/such/run"], "no metrics.csv"),
    ],
)
def test_errors_are_one_line_with_exit_status_2(argv, message, run_dir: Path, capsys) -> None:
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffsat: error:") and message in err and "\n" not in err


def test_set_with_a_bad_key_names_it(tmp_path: Path, capsys) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps(TINY))
    assert main(["train", str(config), "--out", str(tmp_path / "r"), "--set", "train.batchsize=3"]) == 2
    assert "'train.batchsize': unknown key" in capsys.readouterr().err


def test_every_verb_has_help_with_an_example(capsys) -> None:
    from diffsat.cli import VERBS

    for verb in VERBS:
        name = verb.__name__.rsplit(".", 1)[-1]
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "example:" in capsys.readouterr().out, name


@pytest.mark.parametrize("verb", ["sample", "chain", "upscale"])
def test_sampler_help_states_the_verbs_own_defaults(verb: str, capsys) -> None:
    """The help of --sampler, --steps and --batch-size names the default the verb actually parses."""
    from diffsat.cli import build_parser

    args = build_parser().parse_args([verb, "run", "--out", "o"])
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default: {args.sampler} (" in text and f"(default: {args.steps})" in text
    assert f"images per network call (default: {args.batch_size})" in text
