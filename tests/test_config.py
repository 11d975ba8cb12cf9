"""Config validation: one-line errors naming the key and the file; overrides; the shipped configs load."""

import json
from pathlib import Path

import pytest
import torch

from diffsat.config import AutoencoderRunConfig, Config, ConfigError, apply_overrides, load_any_config, load_config, save_config
from diffsat.models.autoencoder import build_autoencoder
from diffsat.models.unet import build_unet
from diffsat.rundir import check_latent_shapes, load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.json") if "cd" not in json.loads(p.read_text())),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    config = load_any_config(path)  # change-detection configs ({"cd": ...}): tests/cd
    if isinstance(config, AutoencoderRunConfig):
        with torch.device("meta"):
            build_autoencoder(config.autoencoder)
        return
    assert isinstance(config, Config)
    with torch.device("meta"):
        build_unet(config.model)


LATENT_RECIPES = [("satellite64_latent_cpu.json", "satellite64_autoencoder_cpu.json"),
                  ("satellite256_latent.json", "satellite256_autoencoder.json")]


@pytest.mark.parametrize("latent, autoencoder", LATENT_RECIPES)
def test_shipped_latent_recipes_fit_their_autoencoders(latent: str, autoencoder: str) -> None:
    config, ae = load_config(CONFIGS / latent), load_any_config(CONFIGS / autoencoder)
    assert Path(config.latent.autoencoder).name == Path(autoencoder).stem  # runs/<autoencoder config name>
    check_latent_shapes(config, ae, CONFIGS / autoencoder)
    assert config.data.path == ae.data.path and config.data.holdout == ae.data.holdout  # same held-out tiles


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"train": {"batch_sise": 8}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "'train.batch_sise'" in message and "unknown key" in message
    assert "\n" not in message


def test_mistyped_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config key 'train.lr': Input should be a valid number"):
        load_config(write(tmp_path, {"train": {"lr": "fast"}}))
    with pytest.raises(ConfigError, match=r"'diffusion.objective'"):
        load_config(write(tmp_path, {"diffusion": {"objective": "score"}}))


def test_inconsistent_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.image_size \(32\) must equal data.image_size \(28\)"):
        load_config(write(tmp_path, {"model": {"image_size": 32}}))
    with pytest.raises(ConfigError, match=r"train.guidance \(3\) needs a class-conditional model: set model.num"):
        load_config(write(tmp_path, {"train": {"guidance": 3}}))
    assert load_config(write(tmp_path, {"model": {"num_classes": 10}, "train": {"guidance": 3}})).train.guidance == 3
    with pytest.raises(ConfigError, match=r"train.sample_steps \(100\) cannot exceed diffusion.timesteps \(50\)"):
        load_config(write(tmp_path, {"diffusion": {"timesteps": 50}}))


def test_broken_json_names_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c.json: invalid JSON at line 2, column"):
        load_config(write(tmp_path, '{"train":\n  {"lr": }}'))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.json")


def test_comments_are_allowed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '{"train": {"lr": 0.003}} // DDPM-CD style comment'))
    assert cfg.train.lr == 0.003


def test_overrides_are_validated_too(tmp_path: Path) -> None:
    path = write(tmp_path, {})
    cfg = load_config(path, ["train.lr=3e-4", "model.attn_resolutions=[14]", "data.path=/x/y"])
    assert cfg.train.lr == 3e-4 and cfg.model.attn_resolutions == (14,) and cfg.data.path == "/x/y"
    with pytest.raises(ConfigError, match="'train.max_step'"):
        load_config(path, ["train.max_step=3"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["lr=3"])
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        apply_overrides({}, ["trian.lr=3"])


def test_saved_config_round_trips_and_a_run_dir_loads(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "mnist_cpu.json")
    save_config(cfg, tmp_path / "config.json")
    assert load_run_config(tmp_path) == cfg
