"""Starting a run from other weights (train.init_from) and freezing parts of the U-Net (train.freeze)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config, train_tiny_run
from diffsat.cli import main
from diffsat.config import parse_config
from diffsat.errors import ConfigError
from diffsat.models.unet import build_unet
from diffsat.training.init import PARTS, freeze


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("source"), tiny_config())


def _weights(run: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run / name))


def test_a_run_starts_from_another_runs_ema_weights(source_run: Path, tmp_path: Path) -> None:
    config = tiny_config(max_steps=1, lr=1e-12, warmup_steps=0, init_from=str(source_run))
    run = train_tiny_run(tmp_path, config)
    start, new = _weights(source_run, "ema.safetensors"), _weights(run)
    assert start.keys() == new.keys()
    assert all(torch.allclose(start[k], new[k], atol=1e-6) for k in start)  # one step at lr 1e-12: unchanged
    assert json.loads((run / "config.json").read_text())["train"]["init_from"] == str(source_run)
    (tmp_path / "scratch").mkdir()
    scratch = train_tiny_run(tmp_path / "scratch", tiny_config(max_steps=1, lr=1e-12, warmup_steps=0))
    assert not torch.allclose(_weights(scratch)["init_conv.weight"], start["init_conv.weight"])


def test_a_mismatching_source_is_one_line_naming_it(source_run: Path, tmp_path: Path, capsys) -> None:
    config = tiny_config(init_from=str(source_run), model={"base_channels": 16})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"train.init_from {source_run}" in err[0] and "shape" in err[0]


def test_frozen_parts_stay_bit_identical_while_the_rest_trains(source_run: Path, tmp_path: Path) -> None:
    config = tiny_config(max_steps=4, init_from=str(source_run), freeze=["encoder", "noise_embedding"],
                         weight_decay=0.1)
    run = train_tiny_run(tmp_path, config)
    start, model, ema = _weights(source_run, "ema.safetensors"), _weights(run), _weights(run, "ema.safetensors")
    frozen = [k for k in start if k.startswith(PARTS["encoder"] + PARTS["noise_embedding"])]
    trained = [k for k in start if k.startswith(PARTS["decoder"])]
    assert frozen and trained
    assert all(torch.equal(start[k], model[k]) and torch.equal(start[k], ema[k]) for k in frozen)
    assert any(not torch.equal(start[k], model[k]) for k in trained)


def test_freeze_names_parts_or_prefixes_and_refuses_unknown_ones() -> None:
    cfg = parse_config(tiny_config())
    net = build_unet(cfg.model)
    total = sum(p.numel() for p in net.parameters())
    middle = freeze(net, ["middle"])
    assert 0 < middle < total and all(not p.requires_grad for n, p in net.named_parameters() if n.startswith("mid."))
    assert freeze(net, ["downs.0"]) > 0
    with pytest.raises(ConfigError, match="train.freeze 'bottleneck': no such part"):
        freeze(net, ["bottleneck"])


def test_autoencoder_runs_refuse_init_from() -> None:
    from diffsat.config import parse_autoencoder_config

    with pytest.raises(ConfigError, match="train.init_from and train.freeze apply to diffusion runs"):
        parse_autoencoder_config({"autoencoder": {"image_size": 32, "in_channels": 1}, "data": {"image_size": 32},
                          "train": {"init_from": "runs/x"}})
