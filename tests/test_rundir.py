"""Run directories: file names; checkpoints committed whole, kept N, read back with fallback; failed saves and
damaged files as one line; old flat runs; which weights load_model takes."""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file as real_save_file

from diffsat import rundir
from diffsat.cli import main
from diffsat.config import Config, save_config
from diffsat.models.unet import build_unet


def tiny() -> Config:
    return Config.model_validate({"model": {"base_channels": 8, "channel_mults": [1, 2], "res_blocks": 1,
                                            "attn_resolutions": [], "norm_groups": 4, "image_size": 8},
                                  "data": {"image_size": 8}})


def save_steps(run_dir: Path, cfg: Config, steps: range, keep: int = 2) -> dict[int, dict]:
    """Save a checkpoint of a tiny network (different weights each step) for each of ``steps``; returns each
    step's ``{"model": state dict, "ema": state dict}``."""
    save_config(cfg, rundir.run_file(run_dir, rundir.CONFIG_FILE))
    saved = {}
    for step in steps:
        torch.manual_seed(step)
        model, ema = build_unet(cfg.model), build_unet(cfg.model)
        rundir.save_checkpoint(run_dir, model, ema, {"step": step, "elapsed_s": 1.5, "m": torch.ones(3)}, keep=keep)
        saved[step] = {"model": model.state_dict(), "ema": ema.state_dict()}
    return saved


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_round_trip_and_which_weights_load(tmp_path: Path) -> None:
    cfg = tiny()
    save_config(cfg, rundir.run_file(tmp_path, rundir.CONFIG_FILE))
    torch.manual_seed(0)
    model, ema = build_unet(cfg.model), build_unet(cfg.model)
    rundir.save_checkpoint(tmp_path, model, ema, {"step": 7, "elapsed_s": 1.5})
    assert rundir.is_run_dir(tmp_path) and rundir.load_train_state(tmp_path) == {"step": 7, "elapsed_s": 1.5}
    found = rundir.resume_checkpoint(tmp_path)
    assert found.checkpoint.folder == tmp_path / "checkpoints" / "step-0000007"
    assert equal(found.model, model.state_dict()) and equal(found.ema, ema.state_dict())
    loaded = rundir.load_model(tmp_path)
    assert loaded.weights == "ema" and loaded.config == cfg and loaded.schedule.timesteps == cfg.diffusion.timesteps
    assert equal(loaded.network.state_dict(), ema.state_dict())
    raw = rundir.load_model(tmp_path, ema=False)
    assert raw.weights == "model" and equal(raw.network.state_dict(), model.state_dict())
    for name in ("model.safetensors", "ema.safetensors"):  # exported for users: hard links, no second copy
        assert (tmp_path / name).stat().st_ino == (found.checkpoint.file(name)).stat().st_ino
    assert not (tmp_path / "train_state.pt").exists()


def test_keeps_the_newest_n_and_leaves_nothing_uncommitted(tmp_path: Path) -> None:
    saved = save_steps(tmp_path, tiny(), range(1, 6), keep=2)
    assert [c.step for c in rundir.committed_checkpoints(tmp_path)] == [5, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000004", "step-0000005"]
    manifest = json.loads((tmp_path / "checkpoints" / "step-0000005" / "checkpoint.json").read_text())
    assert manifest["step"] == 5 and manifest["format"] == "diffsat-checkpoint-v1"
    assert manifest["files"] == {n: (tmp_path / "checkpoints" / "step-0000005" / n).stat().st_size
                                 for n in ("model.safetensors", "ema.safetensors", "train_state.pt")}
    assert equal(rundir.load_model(tmp_path).network.state_dict(), saved[5]["ema"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def enospc_on(name: str):
    """A ``save_file`` that writes half of ``name`` and then fails as a full disk would."""
    def save_file(tensors, path, metadata=None):
        if Path(path).name != name:
            return real_save_file(tensors, path, metadata=metadata)
        Path(path).write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", path)
    return save_file


@pytest.mark.parametrize("failure", ["enospc", "permission", "torch-save", "safetensors"])
def test_a_failed_save_is_one_line_and_the_last_checkpoint_stays(tmp_path: Path, monkeypatch, failure: str) -> None:
    cfg = tiny()
    saved = save_steps(tmp_path, cfg, range(1, 2))
    if failure == "enospc":
        monkeypatch.setattr(rundir.writing, "save_file", enospc_on("ema.safetensors"))
        expected = r"step-0000002\.tmp-\d+/ema\.safetensors: No space left on device \[ENOSPC\]"
    elif failure == "permission":
        monkeypatch.setattr(rundir.writing.os, "rename", lambda a, b: (_ for _ in ()).throw(
            PermissionError(errno.EACCES, "Permission denied", str(a))))
        expected = r"step-0000002: Permission denied \[EACCES\]"
    elif failure == "torch-save":  # how torch reports a failed write
        monkeypatch.setattr(rundir.writing.torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos 320 vs 256\nmore detail")))
        expected = r"step-0000002\.tmp-\d+/train_state\.pt: \[enforce fail at inline_container\.cc:664\] \. unexpected"
    else:
        monkeypatch.setattr(rundir.writing, "save_file", lambda *a, **k: (_ for _ in ()).throw(
            rundir.writing.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")))
        expected = r"model\.safetensors: Error while serializing: I/O error: No space left on device"
    torch.manual_seed(9)
    model = build_unet(cfg.model)
    with pytest.raises(rundir.CheckpointError) as caught:
        rundir.save_checkpoint(tmp_path, model, model, {"step": 2, "elapsed_s": 0.0})
    message = str(caught.value)
    assert "\n" not in message and re.search(f"could not write the checkpoint of step 2: .*{expected}", message)
    assert re.search(r"\(the checkpoint needs about 0\.\d MiB; [\d.]+ MiB free there\); training stopped; the last "
                     r"committed checkpoint \(.*step-0000001\) is intact", message), message
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000001"]  # the partial one removed
    assert equal(rundir.resume_checkpoint(tmp_path).ema, saved[1]["ema"])
    assert equal(rundir.load_model(tmp_path).network.state_dict(), saved[1]["ema"])


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scramble(path: Path) -> None:
    """The same size, garbage in the header."""
    data = bytearray(path.read_bytes())
    data[:64] = b"\xff" * 64
    path.write_bytes(bytes(data))


DAMAGE = [(truncate, "model.safetensors", "truncated or damaged after its commit"),
          (truncate, "ema.safetensors", "truncated or damaged after its commit"),
          (truncate, "train_state.pt", "truncated or damaged after its commit"),
          (truncate, "checkpoint.json", "not a readable checkpoint manifest"),
          (scramble, "model.safetensors", "not a readable safetensors file"),
          (scramble, "ema.safetensors", "not a readable safetensors file"),
          (scramble, "train_state.pt", "not a PyTorch checkpoint")]


@pytest.mark.parametrize(("damage", "name", "reason"), DAMAGE, ids=[f"{d.__name__}-{n}" for d, n, _ in DAMAGE])
def test_an_unreadable_newest_checkpoint_falls_back_with_a_warning(tmp_path: Path, damage, name: str,
                                                                   reason: str) -> None:
    saved = save_steps(tmp_path, tiny(), range(1, 3))
    bad = tmp_path / "checkpoints" / "step-0000002" / name
    damage(bad)
    with pytest.warns(UserWarning, match=rf"{re.escape(str(bad))}: .*{reason}.*; the checkpoint of step 2 is "
                                         rf"skipped, step 1 is used"):
        found = rundir.resume_checkpoint(tmp_path)
    assert found.checkpoint.step == 1 and equal(found.ema, saved[1]["ema"])
    which = "model" if name == "model.safetensors" else "ema"  # the manifest check covers every file's size
    if damage is truncate or name != "train_state.pt":
        with pytest.warns(UserWarning, match=re.escape(str(bad))):
            loaded = rundir.load_model(tmp_path, ema=which == "ema")
        assert equal(loaded.network.state_dict(), saved[1][which])
    shutil.rmtree(tmp_path / "checkpoints" / "step-0000001")  # no checkpoint to fall back to: one line
    with pytest.raises(rundir.CheckpointError, match=rf"^{re.escape(str(bad))}: [^\n]*{reason}[^\n]*$"):
        rundir.resume_checkpoint(tmp_path)


def flat_run(run_dir: Path, cfg: Config) -> dict:
    """A run of the flat layout written before step directories, at step 3; returns its EMA weights."""
    saved = save_steps(run_dir / "new", cfg, range(3, 4))
    for name in ("config.json", "model.safetensors", "ema.safetensors", "checkpoints/step-0000003/train_state.pt"):
        shutil.copyfile(run_dir / "new" / name, run_dir / Path(name).name)
    shutil.rmtree(run_dir / "new")
    return saved[3]["ema"]


def test_old_layout_runs_load_sample_and_resume(tmp_path: Path) -> None:
    cfg = tiny()
    ema = flat_run(tmp_path, cfg)
    assert rundir.is_run_dir(tmp_path) and equal(rundir.load_model(tmp_path).network.state_dict(), ema)
    found = rundir.resume_checkpoint(tmp_path)
    assert found.checkpoint == rundir.Checkpoint(3, tmp_path) and equal(found.ema, ema)
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "samples"), "--n", "2", "--steps", "2"]) == 0
    assert (tmp_path / "samples" / "grid.png").is_file()
    with pytest.raises(rundir.CheckpointError, match="already holds a training checkpoint"):
        rundir.check_fresh_start(tmp_path)


@pytest.mark.parametrize(("damage", "name", "reason"),
                         [(truncate, "model.safetensors", "not a readable safetensors file"),
                          (truncate, "train_state.pt", "not a PyTorch checkpoint")])
def test_damaged_old_layout_files_are_one_line(tmp_path: Path, damage, name: str, reason: str) -> None:
    flat_run(tmp_path, tiny())
    damage(tmp_path / name)
    with pytest.raises(rundir.CheckpointError, match=rf"^{re.escape(str(tmp_path / name))}: {reason}[^\n]*$"):
        rundir.resume_checkpoint(tmp_path)


def test_leftovers_of_killed_saves_are_removed(tmp_path: Path) -> None:
    save_steps(tmp_path, tiny(), range(1, 3))
    folder = tmp_path / "checkpoints"
    leftovers = [folder / "step-0000003.tmp-4242", folder / "step-0000001.old-4242"]
    for path in leftovers:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"partial")
    stray = [tmp_path / ".model.safetensors.0123456789ab.tmp", tmp_path / "samples" / ".final.png.0123456789ab.tmp"]
    stray[1].parent.mkdir()
    for path in stray:
        path.write_bytes(b"")
    kept = [folder / "step-0000000.unreadable", tmp_path / "notes.tmp"]
    kept[0].mkdir()
    kept[1].write_text("mine")
    assert sorted(rundir.remove_uncommitted(tmp_path)) == sorted(leftovers + stray)
    assert not any(p.exists() for p in leftovers + stray) and all(p.exists() for p in kept)
    assert [c.step for c in rundir.committed_checkpoints(tmp_path)] == [2, 1]


def test_set_aside_newer_unreadable_checkpoints(tmp_path: Path) -> None:
    save_steps(tmp_path, tiny(), range(1, 4), keep=3)
    truncate(tmp_path / "checkpoints" / "step-0000003" / "ema.safetensors")
    with pytest.warns(UserWarning):
        found = rundir.resume_checkpoint(tmp_path)
    assert rundir.set_aside_newer(tmp_path, found.checkpoint) == [tmp_path / "checkpoints" / "step-0000003.unreadable"]
    assert [c.step for c in rundir.committed_checkpoints(tmp_path)] == [2, 1]
    save_steps(tmp_path, tiny(), range(3, 4))  # the resumed run commits step 3 anew
    assert [c.step for c in rundir.committed_checkpoints(tmp_path)] == [3, 2]


def test_file_names_and_grids(tmp_path: Path) -> None:
    assert rundir.run_file(tmp_path, rundir.METRICS_FILE) == tmp_path / "metrics.csv"
    with pytest.raises(ValueError, match="'notes.txt' is not a run file"):
        rundir.run_file(tmp_path, "notes.txt")
    for step in (20, 3, 100):
        path = rundir.grid_path(tmp_path, step)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
    rundir.grid_path(tmp_path).write_bytes(b"")  # final.png is not a periodic grid
    assert [s for s, _ in rundir.periodic_grids(tmp_path)] == [3, 20, 100]
    assert rundir.grid_path(tmp_path, 3).name == "step_0000003.png"


def test_random_model_has_the_configs_architecture_and_is_seeded(tmp_path: Path) -> None:
    cfg = tiny()
    save_config(cfg, tmp_path / "tiny.json")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = rundir.random_model(cfg, seed=1), rundir.random_model(tmp_path / "tiny.json", seed=1), rundir.random_model(cfg, seed=2)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random state is untouched
    assert a.weights == "random (seed 1)" and a.config == cfg and b.config == cfg and not a.network.training
    assert a.schedule.timesteps == cfg.diffusion.timesteps
    shapes = {k: v.shape for k, v in build_unet(cfg.model).state_dict().items()}
    assert {k: v.shape for k, v in a.network.state_dict().items()} == shapes
    assert all(torch.equal(x, y) for x, y in zip(a.network.state_dict().values(), b.network.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.network.state_dict().values(), c.network.state_dict().values()))
