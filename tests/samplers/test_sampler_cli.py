"""``diffsat sample`` and ``diffsat chain`` with the sampler options (--spacing, --eta, --x0-clip) end to end
on a tiny trained run, and their one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config, train_tiny_run
from PIL import Image

from diffsat.cli import main
from diffsat.data.transforms import to_uint8_hwc
from diffsat.rundir import load_model
from diffsat.sampling import SampleSettings, generate

TINY = tiny_config(data={"limit": 16}, max_steps=2, log_every=1, sample_steps=2)
OPTIONS = ["--sampler", "ddim", "--eta", "0.5", "--spacing", "quadratic", "--x0-clip", "dynamic"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("sampler_cli"), TINY)


def read_pngs(folder: Path, n: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f"sample_{i:05d}.png")) for i in range(n)])


def test_sample_options_reach_the_images(run_dir: Path, tmp_path: Path) -> None:
    """The PNGs of `diffsat sample ... --sampler ddim --eta 0.5 --spacing quadratic --x0-clip dynamic` are
    exactly what the library draws with those settings, and differ from the default DDIM's."""
    argv = ["sample", str(run_dir), "--n", "3", "--steps", "4", "--seed", "5", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "opts"), *OPTIONS]) == 0
    assert main([*argv, "--out", str(tmp_path / "plain"), "--sampler", "ddim"]) == 0
    loaded = load_model(run_dir)
    settings = SampleSettings("ddim", 4, eta=0.5, spacing="quadratic", x0_clip="dynamic", device="cpu")
    expected = to_uint8_hwc(generate(loaded.network, loaded.config, 3, 5, settings, progress=False))[..., 0]
    got = read_pngs(tmp_path / "opts", 3)
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, read_pngs(tmp_path / "plain", 3))


def test_chain_takes_the_options_and_names_them(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from diffsat import plots

    titles: list[str] = []
    real = plots.plot_chain
    monkeypatch.setattr(plots, "plot_chain", lambda *a, title=None, rgb=None: (titles.append(title),
                                                                             real(*a, title=title, rgb=rgb)))
    out = tmp_path / "chain.png"
    assert main(["chain", str(run_dir), "--out", str(out), "--steps", "4", "--frames", "3", "--device", "cpu",
                 *OPTIONS]) == 0
    assert out.stat().st_size > 1000
    assert titles == ["ddim (eta 0.5), 4 steps, quadratic spacing, dynamic x0, seed 0"]


@pytest.mark.parametrize("verb", ["sample", "chain"])
@pytest.mark.parametrize("sampler", ["ancestral", "dpm++", "dpm++sde"])
def test_eta_without_ddim_is_a_one_line_error(verb: str, sampler: str, run_dir: Path, tmp_path: Path,
                                              capsys) -> None:
    out = tmp_path / ("s" if verb == "sample" else "c.png")
    assert main([verb, str(run_dir), "--out", str(out), "--sampler", sampler, "--eta", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"diffsat: error: eta (--eta 0.3) is a DDIM option and sampler '{sampler}' has none: "
                   "use the ddim sampler (--sampler ddim) or leave eta at 0")
    assert not out.exists()


def test_eta_error_comes_before_loading_the_network(tmp_path: Path, capsys) -> None:
    """A bad option combination is reported even when the checkpoint does not exist (no model loaded)."""
    assert main(["sample", str(tmp_path / "missing"), "--out", str(tmp_path / "s"), "--eta", "1"]) == 2
    assert "is a DDIM option" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--spacing", "cosine"), ("--x0-clip", "soft")])
def test_unknown_choices_are_refused_by_the_parser(flag: str, value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "RUN", "--out", "x", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: invalid choice: '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["sample", "chain"])
def test_help_explains_the_options(verb: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--spacing {uniform,quadratic,trailing,logsnr}", "dpm++ and dpm++sde: logsnr", "--eta ETA",
                  "DDIM only", "--x0-clip {static,dynamic,none}", "dynamic thresholding"):
        assert words in text, words


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(data={"limit": 16}, model={"num_classes": 10}, max_steps=2, log_every=1, sample_steps=2,
                         guidance=2.0)
    return train_tiny_run(tmp_path_factory.mktemp("conditional_cli"), config)


def test_sample_by_class_with_guidance(conditional_run: Path, tmp_path: Path) -> None:
    argv = ["sample", str(conditional_run), "--n", "4", "--steps", "3", "--device", "cpu", "--label", "3,8",
            "--guidance", "1.5", "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    assert (tmp_path / "s" / "labels.txt").read_text().split() == [
        "sample_00000.png", "3", "sample_00001.png", "8", "sample_00002.png", "3", "sample_00003.png", "8"]
    loaded = load_model(conditional_run)
    settings = SampleSettings("dpm++sde", 3, device="cpu", guidance=1.5)  # the CLI's default sampler
    expected = to_uint8_hwc(generate(loaded.network, loaded.config, 4, 0, settings, labels=[3, 8], progress=False))
    assert np.array_equal(read_pngs(tmp_path / "s", 4), expected[..., 0])
    assert main(["chain", str(conditional_run), "--n", "1", "--steps", "3", "--frames", "2", "--label", "5",
                 "--out", str(tmp_path / "c.png")]) == 0


@pytest.mark.parametrize("flags, message", [
    (["--guidance", "2"], "diffsat: error: --guidance 2 needs a class-conditional model (model.num_classes)"),
    (["--label", "3"], "diffsat: error: --label needs a class-conditional model (model.num_classes)"),
])
def test_labels_on_an_unconditional_run_are_one_line_errors(flags, message, run_dir: Path, tmp_path: Path,
                                                            capsys) -> None:
    assert main(["sample", str(run_dir), "--out", str(tmp_path / "s"), "--steps", "2", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


def test_out_of_range_label_is_a_one_line_error(conditional_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["sample", str(conditional_run), "--out", str(tmp_path / "s"), "--label", "10"]) == 2
    assert capsys.readouterr().err.strip() == (
        "diffsat: error: class label 10 out of range: this model has classes 0..9 (--label)")
    with pytest.raises(SystemExit):
        main(["sample", str(conditional_run), "--out", str(tmp_path / "s"), "--label", "x"])


@pytest.mark.parametrize("verb", ["sample", "chain"])
def test_default_sampler_is_the_measured_one(verb: str, tmp_path: Path) -> None:
    """No sampler flags: SDE-DPM-Solver++ with 10 steps (benchmarks/RESULTS.md, issue 19), precision auto;
    the chain's default 11 frames fit its 10 steps."""
    from diffsat.cli import build_parser

    args = build_parser().parse_args([verb, "run", "--out", str(tmp_path / "x")])
    assert (args.sampler, args.steps, args.precision) == ("dpm++sde", 10, "auto")
    if verb == "chain":
        assert args.frames <= args.steps + 1
