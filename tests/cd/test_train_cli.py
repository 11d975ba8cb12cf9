import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cd_fixtures import cd_config, make_pairs, tiny_backbone, write_config  # noqa: F401  (fixture)
from diffsat.cd import load_cd_config, train_cd
from diffsat.cd.config import parse_cd_config
from diffsat.cli import main
from diffsat.config import ConfigError


@pytest.mark.parametrize("kind", ["ddpmcd", "fc_siam_diff"])
def test_resume_continues_exactly(tiny_backbone: Path, tmp_path: Path, kind: str) -> None:
    make_pairs(tmp_path / "pairs", size=32)
    base = cd_config(tmp_path / "pairs", tiny_backbone if kind == "ddpmcd" else None)
    base["cd"]["data"]["test"] = []
    straight = parse_cd_config(base)
    train_cd(straight, tmp_path / "straight", progress=False)
    half = json.loads(json.dumps(base))
    half["cd"]["train"]["max_steps"] = 2
    train_cd(parse_cd_config(half), tmp_path / "resumed", progress=False)
    train_cd(straight, tmp_path / "resumed", resume=True, progress=False)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and sum(r.startswith("4,") for r in rows) >= 1


def test_a_kill_between_the_head_checkpoints_writes_resumes_exactly(tiny_backbone: Path, tmp_path: Path) -> None:
    """SIGKILL after the head weights of step 4's checkpoint are written and before its train state: the torn
    checkpoint is never committed, --resume continues from step 2, and the weights end as an uninterrupted
    run's (the best weights by validation F1 too)."""
    make_pairs(tmp_path / "pairs", size=32)
    base = cd_config(tmp_path / "pairs", tiny_backbone)
    base["cd"]["data"]["test"] = []
    cfg = parse_cd_config(base)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the child: the same thread count, the same float sums
    try:
        train_cd(cfg, tmp_path / "straight", progress=False)
        _kill_and_resume(cfg, tmp_path / "killed")
    finally:
        torch.set_num_threads(threads)
    for name in ("model.safetensors", "best.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "killed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert not list((tmp_path / "killed" / "checkpoints").glob("*.tmp-*"))  # the torn save was cleared


def _kill_and_resume(cfg, run: Path) -> None:
    """Train ``cfg`` into ``run`` in a forked child killed inside step 4's save, then resume it here."""
    from diffsat.rundir import writing

    pid = os.fork()
    if pid == 0:  # the child dies inside the save of step 4, between model.safetensors and train_state.pt
        try:
            real_save = writing.torch.save
            writing.torch.save = lambda state, path: (os.kill(os.getpid(), signal.SIGKILL) if state["step"] == 4
                                                      else real_save(state, path))
            train_cd(cfg, run, progress=False)
        finally:
            os._exit(1)
    assert os.WIFSIGNALED(os.waitpid(pid, 0)[1])
    torn = list((run / "checkpoints").glob("step-0000004.tmp-*"))
    assert torn and (torn[0] / "model.safetensors").is_file() and not (torn[0] / "train_state.pt").exists()
    train_cd(cfg, run, resume=True, progress=False)


def test_cli_train_predict_evaluate_end_to_end(tiny_backbone: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs"
    make_pairs(pairs, size=32)
    config = cd_config(pairs, tiny_backbone)
    config["cd"]["head"]["compare"] = ["fc_siam_diff", "cva"]
    path = write_config(tmp_path / "cd.json", config)
    run = tmp_path / "run"
    assert main(["cd", "train", str(path), "--out", str(run), "--no-progress"]) == 0
    doc = json.loads((run / "test_metrics.json").read_text())
    assert set(doc["methods"]) == {"ddpmcd", "fc_siam_diff", "cva"}
    assert doc["split"] == {"train": ["p0.png", "p1.png"], "val": ["p2.png"], "test": ["p3.png"]}
    for name in ("best.safetensors", "model.safetensors", "checkpoints/step-0000004/train_state.pt", "metrics.csv",
                 "report.html",
                 "test/p3.png", "test/figures/p3.png", "baselines/fc_siam_diff/best.safetensors",
                 "baselines/cva/test/p3.png"):
        assert (run / name).is_file(), name
    assert "Change detection (test split)" in (run / "report.html").read_text()
    assert doc["methods"]["ddpmcd"]["training"]["step"] == 4 and doc["methods"]["cva"]["training"] is None

    out = tmp_path / "pred"
    assert main(["cd", "predict", str(run), "--pairs", str(pairs), "--list", "all", "--out", str(out),
                 "--probabilities", "--no-progress"]) == 0
    masks = sorted(p.name for p in out.glob("*.png"))
    assert masks == ["p0.png", "p1.png", "p2.png", "p3.png"]
    assert (out / "probability" / "p3.png").is_file() and (out / "figures" / "p0.png").is_file()
    from PIL import Image
    assert set(np.unique(np.asarray(Image.open(out / "p3.png")))) <= {0, 255}

    # the predicted test mask scores exactly as the run scored it
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    (only_test / "p3.png").write_bytes((out / "p3.png").read_bytes())
    metrics = tmp_path / "m.json"
    assert main(["cd", "evaluate", str(only_test), "--labels", str(pairs), "--out", str(metrics)]) == 0
    scored = json.loads(metrics.read_text())
    assert scored["f1"] == pytest.approx(doc["methods"]["ddpmcd"]["f1"])
    assert scored["tp"] == doc["methods"]["ddpmcd"]["tp"] and scored["per_image_f1"].keys() == {"p3.png"}

    assert main(["cd", "train", str(path), "--out", str(run), "--no-progress"]) == 2  # would overwrite
    assert "--resume" in capsys.readouterr().err

    # a run of the older layout (head weights and train_state.pt side by side, no checkpoints/) still predicts
    # the same masks, and --resume on it is one line
    step_dir = next((run / "checkpoints").iterdir())
    (step_dir / "train_state.pt").rename(run / "train_state.pt")
    for folder in (run / "checkpoints", run / "baselines" / "fc_siam_diff" / "checkpoints"):
        shutil.rmtree(folder)
    old = tmp_path / "pred_old"
    assert main(["cd", "predict", str(run), "--pairs", str(pairs), "--list", "all", "--out", str(old),
                 "--no-progress"]) == 0
    assert (old / "p3.png").read_bytes() == (out / "p3.png").read_bytes()
    assert main(["cd", "train", str(path), "--out", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "trained by an earlier diffsat" in err and err.count("\n") == 1


def test_config_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "bad.json", {"cd": {"train": {"lr": 1e-3, "epochs": 3}}})
    with pytest.raises(ConfigError, match=r"bad.json: config key 'cd.train.epochs': unknown key"):
        load_cd_config(path)
    with pytest.raises(ConfigError, match="unknown top-level key 'model'"):
        parse_cd_config({"cd": {}, "model": {}}, "x.json")
    with pytest.raises(ConfigError, match="needs features.backbone"):
        parse_cd_config({"cd": {"head": {"kind": "ddpmcd"}}}, "x.json")
    with pytest.raises(ConfigError, match="unknown section 'optim'"):
        load_cd_config(write_config(tmp_path / "ok.json", {"cd": {}}), ["optim.lr=1"])
    assert main(["cd", "evaluate", str(tmp_path / "missing"), "--labels", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffsat: error:") and "missing: prediction folder not found" in err and "\n" not in err


def test_shipped_cpu_config_is_valid() -> None:
    cfg = load_cd_config(Path(__file__).resolve().parents[2] / "configs" / "cd_levir_cpu.json")
    assert cfg.head.compare == ("fc_siam_diff", "cva")
    split = [n for part in (cfg.data.train, cfg.data.val, cfg.data.test) for s in part for n in s.names]
    assert len(split) == 21 and len(set(split)) == 21
