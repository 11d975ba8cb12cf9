"""Loading DDPM-CD / SR3 checkpoints and configs (diffsat.ddpmcd, diffsat.rundir).

Small random networks are saved in each foreign layout and loaded back bit for bit; the 391M DDPM-CD
generator layout is checked key by key against ``../shared/reference/ddpm-cd-generator-keys.txt`` on the
meta device only (nothing of its 1.5 GB is materialised).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diffsat.config import (
    Config,
    ConfigError,
    check_unconditional,
    config_from_ddpmcd,
    is_conditional,
    load_config,
    save_config,
    strip_json_comments,
)
from diffsat.ddpmcd import BUFFER_NAMES, detect_layout, map_key, to_our_keys
from diffsat.diffusion.schedules import NoiseSchedule, make_betas
from diffsat.errors import CheckpointError
from diffsat.rundir import check_state_dict, compare_schedule, convert_checkpoint, load_model, safe_torch_load
from diffsat.models.unet import build_unet, count_parameters
from diffsat.samplers.common import StackedRandomGenerator
from diffsat.sampling import SampleSettings, generate

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_KEYS = REPO_ROOT.parent / "shared" / "reference" / "ddpm-cd-generator-keys.txt"
DDPMCD_PARAMS = 391_048_067

# ------------------------------------------------------------------------------------------- helpers

SMALL_UNET = dict(in_channel=3, out_channel=3, inner_channel=32, channel_multiplier=[1, 2], attn_res=[8],
                  res_blocks=1, dropout=0.1, norm_groups=8)


def ddpmcd_config(unet: dict | None = None, image_size: int = 16, schedule: str = "linear",
                  n_timestep: int = 100, **diffusion) -> dict:
    """A DDPM-CD-style config dict (unused sections included, as in the released JSONs)."""
    sched = {"schedule": schedule, "n_timestep": n_timestep, "linear_start": 1e-4, "linear_end": 2e-2}
    return {
        "name": "ddpm-train", "phase": "train", "gpu_ids": [0],
        "path": {"log": "logs", "resume_state": None},
        "datasets": {"train": {"name": "LEVIR-CD-256", "dataroot": "dataset/LEVIR", "resolution": image_size}},
        "model": {
            "which_model_G": "sr3", "finetune_norm": False,
            "unet": dict(SMALL_UNET if unet is None else unet),
            "beta_schedule": {"train": dict(sched), "val": dict(sched)},
            "diffusion": {"image_size": image_size, "channels": 3, "loss": "l2", "conditional": False} | diffusion,
        },
        "train": {"n_iter": 1000, "optimizer": {"type": "adam", "lr": 1e-4}},
        "wandb": {"project": "ddpm-unet", "url": "http://wandb.ai/x//y"},
    }


def sr3_config(low: int = 4, high: int = 16) -> dict:
    """A conditional SR3 config (``sr_sr3_16_128.json``'s shape): in_channel 6, low / high resolutions."""
    data = ddpmcd_config(SMALL_UNET | dict(in_channel=6), image_size=high, conditional=True)
    data["datasets"]["train"] |= {"l_resolution": low, "r_resolution": high}
    return data


def write_commented_json(data: dict, path: Path) -> Path:
    """Write ``data`` as DDPM-CD does: indented JSON with ``//`` comments after values and on their own lines."""
    lines = json.dumps(data, indent=4).splitlines()
    text = "// DDPM-CD config, as released\n" + "\n".join(
        f"{line} // note: http://example.org" if line.rstrip().endswith(",") else line for line in lines
    )
    path.write_text(text + "\n")
    return path


def small_config(**diffusion) -> Config:
    return config_from_ddpmcd(ddpmcd_config(**diffusion), "small")


def source_net(cfg: Config) -> torch.nn.Module:
    """Our U-Net with every parameter random (GroupNorm included), in eval mode."""
    torch.manual_seed(0)
    net = build_unet(cfg.model)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return net.eval()


def to_layout(sd: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Our keys -> the ``layout``'s keys (written independently of map_key: its inverse)."""
    if layout == "bare":
        return dict(sd)
    out = {}
    for key, value in sd.items():
        if layout == "sr3" and key.startswith("init_conv."):
            key = "downs.0." + key.removeprefix("init_conv.")
        elif layout == "sr3" and key.startswith("downs."):
            index, rest = key.removeprefix("downs.").split(".", 1)
            key = f"downs.{int(index) + 1}.{rest}"
        out["denoise_fn." + key] = value
    return out


def ddpmcd_buffers(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """GaussianDiffusion.set_new_noise_schedule's 12 buffers (float64 maths, stored float32)."""
    b = betas.double()
    ac = torch.cumprod(1 - b, 0)
    prev = torch.cat([torch.ones(1, dtype=b.dtype), ac[:-1]])
    post_var = b * (1 - prev) / (1 - ac)
    values = [b, ac, prev, ac.sqrt(), (1 - ac).sqrt(), torch.log(1 - ac), (1 / ac).sqrt(), (1 / ac - 1).sqrt(),
              post_var, torch.log(post_var.clamp(min=1e-20)), b * prev.sqrt() / (1 - ac),
              (1 - prev) * (1 - b).sqrt() / (1 - ac)]
    return {name: v.float() for name, v in zip(BUFFER_NAMES, values)}


def inputs(cfg: Config, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    size = cfg.model.image_size
    return torch.randn(batch, cfg.model.in_channels, size, size, generator=gen), torch.rand(batch, generator=gen)


def outputs(net: torch.nn.Module, cfg: Config) -> torch.Tensor:
    with torch.no_grad():
        return net(*inputs(cfg))


def save_layout(tmp_path: Path, cfg: Config, layout: str, buffers: bool = True, name: str = "gen.pth") -> Path:
    sd = to_layout(source_net(cfg).state_dict(), layout)
    if buffers and layout != "bare":
        sd |= ddpmcd_buffers(make_betas("linear", 100))
    path = tmp_path / name
    torch.save(sd, path)
    return path


@pytest.fixture()
def cfg() -> Config:
    return small_config()


# --------------------------------------------------------------------------------- loading, 3 layouts


@pytest.mark.parametrize("layout", ["ddpmcd", "sr3", "bare"])
def test_each_layout_loads_bit_identical(tmp_path: Path, cfg: Config, layout: str) -> None:
    path = save_layout(tmp_path, cfg, layout)
    assert detect_layout(torch.load(path, weights_only=True)) == layout
    loaded = load_model(path, cfg)
    assert not loaded.network.training and loaded.config == cfg and loaded.weights == str(path)
    assert torch.equal(outputs(loaded.network, cfg), outputs(source_net(cfg), cfg))


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dict_loads(tmp_path: Path, cfg: Config, wrapper: str) -> None:
    sd = to_layout(source_net(cfg).state_dict(), "ddpmcd") | ddpmcd_buffers(make_betas("linear", 100))
    torch.save({wrapper: sd, "iter": 100}, tmp_path / "wrapped.pth")
    assert torch.equal(outputs(load_model(tmp_path / "wrapped.pth", cfg).network, cfg), outputs(source_net(cfg), cfg))


def test_bare_safetensors_and_legacy_format_load(tmp_path: Path, cfg: Config) -> None:
    sd = source_net(cfg).state_dict()
    save_file(dict(sd), tmp_path / "bare.safetensors")
    torch.save(to_layout(sd, "sr3"), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    expected = outputs(source_net(cfg), cfg)
    for name in ("bare.safetensors", "legacy.pt"):  # legacy: mmap is impossible, loaded without it
        assert torch.equal(outputs(load_model(tmp_path / name, cfg).network, cfg), expected)


def test_unprefixed_sr3_unet_and_package_level_import(tmp_path: Path, cfg: Config) -> None:
    import diffsat

    sd = {k.removeprefix("denoise_fn."): v for k, v in to_layout(source_net(cfg).state_dict(), "sr3").items()}
    assert detect_layout(sd) == "sr3"
    torch.save(sd, tmp_path / "netG.pth")
    model = diffsat.load_model(tmp_path / "netG.pth", cfg).network
    assert torch.equal(outputs(model, cfg), outputs(source_net(cfg), cfg))


def test_config_may_be_a_ddpmcd_json_path(tmp_path: Path, cfg: Config) -> None:
    path = save_layout(tmp_path, cfg, "ddpmcd")
    json_path = write_commented_json(ddpmcd_config(), tmp_path / "ddpm_train.json")
    assert torch.equal(outputs(load_model(path, json_path).network, cfg), outputs(source_net(cfg), cfg))


def test_loaded_model_owns_its_memory(tmp_path: Path, cfg: Config) -> None:
    """The weights are copied out of the memory-mapped file: overwriting it in place is harmless."""
    path = save_layout(tmp_path, cfg, "ddpmcd")
    model = load_model(path, cfg).network
    path.write_bytes(b"")
    assert torch.equal(outputs(model, cfg), outputs(source_net(cfg), cfg))


# --------------------------------------------------------------------------------------- schedules


def test_schedule_read_back_from_buffers(tmp_path: Path, cfg: Config) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_model(save_layout(tmp_path, cfg, "ddpmcd"), cfg)
    got = model.schedule.alphas_cumprod
    assert got.dtype == torch.float64 and got.shape == (100,)
    torch.testing.assert_close(got, NoiseSchedule.named("linear", 100).alphas_cumprod, rtol=1e-6, atol=0)


def test_schedule_without_buffers_comes_from_config(tmp_path: Path, cfg: Config) -> None:
    model = load_model(save_layout(tmp_path, cfg, "bare"), cfg)
    assert torch.equal(model.schedule.alphas_cumprod, NoiseSchedule.named("linear", 100).alphas_cumprod)


@pytest.mark.parametrize("change", [dict(schedule="cosine"), dict(n_timestep=1000)])
def test_schedule_mismatch_warns_and_file_wins(tmp_path: Path, change: dict) -> None:
    cfg = small_config(**change)
    path = save_layout(tmp_path, small_config(), "ddpmcd")
    with pytest.warns(UserWarning, match="schedule") as record:
        model = load_model(path, cfg)
    assert "linear (T=100" in str(record[0].message)
    assert model.schedule.timesteps == 100


def test_compare_schedule() -> None:
    buffers = ddpmcd_buffers(make_betas("linear", 100))
    assert compare_schedule(buffers, small_config().diffusion) is None
    message = compare_schedule(buffers, small_config(schedule="quad").diffusion)
    assert message is not None and "\n" not in message
    assert "linear (T=100" in message and "quad (T=100" in message and "max |beta difference|" in message
    only_ac = {"alphas_cumprod": buffers["alphas_cumprod"]}  # float32 alpha_bar: compared on alpha_bar itself
    assert compare_schedule(only_ac, small_config().diffusion) is None
    assert "alpha_bar" in compare_schedule(only_ac, small_config(schedule="quad").diffusion)
    assert "T=2000" in compare_schedule(buffers, small_config(n_timestep=2000).diffusion)


# -------------------------------------------------------------------------------- the 391M layout


def reference_keys() -> dict[str, tuple[int, ...]]:
    if not REFERENCE_KEYS.is_file():
        pytest.skip(f"{REFERENCE_KEYS} not found: the reference key list lives in ../shared beside the repo")
    keys = {}
    for line in REFERENCE_KEYS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = re.fullmatch(r"(?:buffer )?(\S+) \(([\d, ]*)\)", line.strip())
            assert match, line
            keys[match[1]] = tuple(int(d) for d in match[2].split(",") if d.strip())
    return keys


def meta_state_dict(keys: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def ddpmcd_391m_config(tmp_path: Path, image_size: int = 256) -> Config:
    unet = SMALL_UNET | dict(inner_channel=128, channel_multiplier=[1, 2, 4, 8, 8], attn_res=[16], res_blocks=2,
                             dropout=0.2)
    del unet["norm_groups"]  # absent in the released JSON: defaults to 32
    data = ddpmcd_config(unet, image_size=image_size, n_timestep=2000)
    for phase in ("train", "val"):
        data["model"]["beta_schedule"][phase] |= {"linear_start": 1e-6, "linear_end": 1e-2}
    return load_config(write_commented_json(data, tmp_path / "ddpm_train.json"))


def test_reference_391m_layout_matches_our_network(tmp_path: Path) -> None:
    keys = reference_keys()
    cfg = ddpmcd_391m_config(tmp_path)
    assert cfg.model.norm_groups == 32 and cfg.diffusion.timesteps == 2000 and cfg.data.channels == 3
    unet, buffers = to_our_keys(meta_state_dict(keys))
    with torch.device("meta"):
        model = build_unet(cfg.model)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in unet.items()} == ours
    assert set(buffers) == set(BUFFER_NAMES) and all(tuple(b.shape) == (2000,) for b in buffers.values())
    assert count_parameters(model) == DDPMCD_PARAMS == sum(math.prod(s) for s in ours.values())
    check_state_dict(model, unet, "I190000_E97_gen.pth")


def test_every_reference_key_maps_in_both_layouts() -> None:
    net_keys = [k for k in reference_keys() if k not in BUFFER_NAMES]
    ours = [k.removeprefix("denoise_fn.") for k in net_keys]
    assert [map_key(k, "ddpmcd") for k in net_keys] == ours
    sr3_keys = list(to_layout(dict.fromkeys(ours), "sr3"))
    assert "denoise_fn.downs.0.weight" in sr3_keys and not any("init_conv" in k for k in sr3_keys)
    assert detect_layout(dict.fromkeys(sr3_keys)) == "sr3"
    assert [map_key(k, "sr3") for k in sr3_keys] == ours
    assert map_key("denoise_fn.downs.14.res_block.res_conv.bias", "sr3") == "downs.13.res_block.res_conv.bias"
    assert map_key("denoise_fn.mid.0.attn.qkv.weight", "sr3") == "mid.0.attn.qkv.weight"


def test_reference_with_image_size_128_names_attention(tmp_path: Path) -> None:
    unet, _ = to_our_keys(meta_state_dict(reference_keys()))
    cfg = ddpmcd_391m_config(tmp_path, image_size=128)
    with torch.device("meta"):
        model = build_unet(cfg.model)
    with pytest.raises(CheckpointError, match=r"image_size.*attn") as err:
        check_state_dict(model, unet, "gen.pth")
    assert "'downs.9.attn." in str(err.value) and "configured image_size 128" in str(err.value)


# ------------------------------------------------------------------------------------------- errors


def test_wrong_inner_channel_names_key_and_both_shapes(tmp_path: Path, cfg: Config) -> None:
    path = save_layout(tmp_path, cfg, "ddpmcd")
    wrong = config_from_ddpmcd(ddpmcd_config(SMALL_UNET | dict(inner_channel=16)), "wrong")
    with pytest.raises(CheckpointError) as err:
        load_model(path, wrong)
    message = str(err.value)
    assert "'noise_level_mlp.1.weight'" in message and "(128, 32)" in message and "(64, 16)" in message
    assert str(path) in message and "inner_channel" in message and "\n" not in message


def test_wrong_image_size_names_attention(tmp_path: Path, cfg: Config) -> None:
    path = save_layout(tmp_path, cfg, "ddpmcd")
    with pytest.raises(CheckpointError, match=r"'downs\.0\.attn\..*attention placement.*image_size"):
        load_model(path, small_config(image_size=8))  # attention moves from level 1 (16/2) to level 0


def test_missing_and_unexpected_keys_are_named(tmp_path: Path, cfg: Config) -> None:
    sd = to_layout(source_net(cfg).state_dict(), "ddpmcd")
    del sd["denoise_fn.ups.1.res_block.block2.block.3.bias"]
    torch.save(sd, tmp_path / "missing.pth")
    missing = r"'ups\.1\.res_block\.block2\.block\.3\.bias' \(shape \(\d+,\)\) is missing"
    with pytest.raises(CheckpointError, match=missing):
        load_model(tmp_path / "missing.pth", cfg)
    sd = to_layout(source_net(cfg).state_dict(), "ddpmcd") | {"denoise_fn.extra.weight": torch.zeros(2)}
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected key 'extra\.weight'"):
        load_model(tmp_path / "extra.pth", cfg)


def test_two_keys_for_one_weight_and_a_missing_first_conv_are_named(cfg: Config) -> None:
    sd = to_layout(source_net(cfg).state_dict(), "ddpmcd")
    doubled = sd | {"final_conv.block.3.bias": sd["denoise_fn.final_conv.block.3.bias"]}  # with and without prefix
    with pytest.raises(CheckpointError, match=r"two checkpoint keys map to 'final_conv\.block\.3\.bias'.*corrupt"):
        to_our_keys(doubled)
    unet, _ = to_our_keys({k: v for k, v in sd.items() if k != "denoise_fn.init_conv.weight"})
    with pytest.raises(CheckpointError, match=r"'init_conv\.weight' .* is missing.*SR3 layout .* mixed up"):
        check_state_dict(source_net(cfg), unet, "gen.pth")


def test_in_channels_mismatch_hint(tmp_path: Path, cfg: Config) -> None:
    path = save_layout(tmp_path, cfg, "ddpmcd")
    conditional = config_from_ddpmcd(sr3_config(), "sr3")
    with pytest.raises(CheckpointError, match=r"'init_conv\.weight'.*in_channels differ \(checkpoint 3, config 6\)"):
        load_model(path, conditional)


def test_foreign_file_without_config_asks_for_it(tmp_path: Path, cfg: Config) -> None:
    with pytest.raises(CheckpointError, match="--config CONFIG.json"):
        load_model(save_layout(tmp_path, cfg, "ddpmcd"))


def test_missing_and_non_checkpoint_files(tmp_path: Path, cfg: Config) -> None:
    with pytest.raises(CheckpointError, match="nothere.pth: checkpoint file not found"):
        load_model(tmp_path / "nothere.pth", cfg)
    (tmp_path / "notes.pth").write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth: not a PyTorch checkpoint"):
        load_model(tmp_path / "notes.pth", cfg)
    torch.save({"optimizer": {"state": {}}, "iter": 5, "epoch": 1}, tmp_path / "I5_E1_opt.pth")
    with pytest.raises(CheckpointError, match="_gen.pth"):
        load_model(tmp_path / "I5_E1_opt.pth", cfg)


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _OpenPayload(_SystemPayload):
    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _save_pickle(obj: object, path: Path, how: str) -> None:
    if how == "torch":
        torch.save(obj, path)
    else:
        with path.open("wb") as f:
            pickle.dump(obj, f)


@pytest.mark.parametrize("payload", [_SystemPayload, _OpenPayload])
@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_malicious_pickle_is_refused_not_executed(tmp_path: Path, cfg: Config, payload: type, how: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil_gen.pth"
    _save_pickle({"denoise_fn.init_conv.weight": torch.zeros(1), "x": payload(marker)}, path, how)
    with pytest.raises(CheckpointError, match="arbitrary unpickling.*refused|refused.*arbitrary unpickling"):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match="evil_gen.pth"):
        load_model(path, cfg)
    with pytest.raises(CheckpointError):
        convert_checkpoint(path, cfg, tmp_path / "out")
    assert not marker.exists()


def test_payload_is_live_under_plain_pickle(tmp_path: Path) -> None:
    """Control: the payload used above does run under an unrestricted unpickler."""
    marker = tmp_path / "PWNED"
    _save_pickle({"x": _OpenPayload(marker)}, tmp_path / "evil.pkl", "pickle")
    with (tmp_path / "evil.pkl").open("rb") as f:
        pickle.load(f)["x"].close()
    assert marker.exists()


# ------------------------------------------------------------------------------------------ convert


@pytest.mark.parametrize("layout", ["ddpmcd", "sr3"])
def test_convert_round_trip(tmp_path: Path, cfg: Config, layout: str) -> None:
    src = save_layout(tmp_path, cfg, layout)
    json_path = write_commented_json(ddpmcd_config(), tmp_path / "ddpm_train.json")
    run_dir = convert_checkpoint(src, json_path, tmp_path / "run")
    names = sorted(p.name for p in run_dir.iterdir())  # no temporary files left behind
    assert names == ["config.json", "ema.safetensors", "model.safetensors", "schedule.safetensors"]
    (tmp_path / "plain").write_text("")
    plain_mode = (tmp_path / "plain").stat().st_mode & 0o777  # what open() gives under this umask
    assert all((run_dir / n).stat().st_mode & 0o777 == plain_mode for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stored float32 schedule agrees with the config's
        direct, converted = load_model(src, cfg), load_model(run_dir)
    assert converted.config == cfg == load_config(run_dir / "config.json")
    assert converted.weights == "ema" and load_model(run_dir, ema=False).weights == "model"
    assert torch.equal(outputs(converted.network, cfg), outputs(direct.network, cfg))
    assert torch.equal(outputs(load_model(run_dir, ema=False).network, cfg), outputs(direct.network, cfg))
    assert torch.equal(converted.schedule.alphas_cumprod, direct.schedule.alphas_cumprod)
    stored = load_file(run_dir / "schedule.safetensors")
    assert stored["alphas_cumprod"].dtype == torch.float64 and stored["alphas_cumprod"].shape == (100,)


def test_convert_checks_shapes_before_writing(tmp_path: Path, cfg: Config) -> None:
    src = save_layout(tmp_path, cfg, "ddpmcd")
    wrong = config_from_ddpmcd(ddpmcd_config(SMALL_UNET | dict(res_blocks=2)), "wrong")
    with pytest.raises(CheckpointError, match="res_blocks"):
        convert_checkpoint(src, wrong, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------- configs


def test_strip_json_comments_keeps_strings() -> None:
    text = '{\n  "url": "http://x", // a comment\n  "q": "a\\"//b", /* block\n comment */ "n": 1\n}\n// end'
    stripped = strip_json_comments(text)
    assert json.loads(stripped) == {"url": "http://x", "q": 'a"//b', "n": 1}
    assert stripped.count("\n") == text.count("\n")


def test_ddpmcd_json_maps_onto_our_config(tmp_path: Path) -> None:
    cfg = load_config(write_commented_json(ddpmcd_config(), tmp_path / "c.json"))
    m, d = cfg.model, cfg.diffusion
    assert (m.in_channels, m.out_channels, m.base_channels, m.channel_mults) == (3, 3, 32, (1, 2))
    assert (m.attn_resolutions, m.res_blocks, m.dropout, m.norm_groups, m.image_size) == ((8,), 1, 0.1, 8, 16)
    assert (d.schedule, d.timesteps, d.beta_start, d.beta_end, d.objective, d.loss) == (
        "linear", 100, 1e-4, 2e-2, "eps", "l2")
    assert (cfg.data.kind, cfg.data.path, cfg.data.channels, cfg.data.image_size) == ("folder", None, 3, 16)
    assert not is_conditional(cfg)
    check_unconditional(cfg)


def test_phase_and_overrides(tmp_path: Path) -> None:
    data = ddpmcd_config()
    data["model"]["beta_schedule"]["train"]["n_timestep"] = 2000
    path = write_commented_json(data, tmp_path / "c.json")
    assert load_config(path).diffusion.timesteps == 100
    assert config_from_ddpmcd(data, "c", phase="train").diffusion.timesteps == 2000
    assert load_config(path, ["train.lr=3e-4"]).train.lr == 3e-4


def test_conditional_sr3_config(tmp_path: Path) -> None:
    cfg = config_from_ddpmcd(sr3_config(4, 16), "sr3.json")
    assert (cfg.model.in_channels, cfg.data.channels, cfg.model.out_channels) == (6, 3, 3)
    assert (cfg.condition.scale, cfg.condition.downsample, cfg.condition.method) == (4, "bicubic", "diffusion")
    assert is_conditional(cfg)
    with pytest.raises(ConfigError, match="super-resolution model .* `diffsat upscale"):
        check_unconditional(cfg)
    no_sizes = ddpmcd_config(SMALL_UNET | dict(in_channel=6), conditional=True)
    with pytest.raises(ConfigError, match=r"'datasets\.train\.l_resolution': missing"):
        config_from_ddpmcd(no_sizes, "sr3.json")


def test_sr3_checkpoint_conditions_as_sr3_does(tmp_path: Path) -> None:
    """Random weights in SR3's key layout (first conv ``downs.0``, 6 input channels): one ancestral step from
    x_T to x_0 through ``generate`` equals SR3's own step, ``x0 = (x_T - sigma eps) / alpha`` with
    ``eps = denoise_fn(cat([SR, x_T]), level)``: the condition first, then x_t."""
    cfg = config_from_ddpmcd(sr3_config(4, 16), "sr3")
    source = source_net(cfg)
    torch.save(to_layout(source.state_dict(), "sr3") | ddpmcd_buffers(make_betas("linear", 100)), tmp_path / "gen.pth")
    loaded = load_model(tmp_path / "gen.pth", write_commented_json(sr3_config(4, 16), tmp_path / "sr3.json"))
    assert loaded.config.condition.scale == 4
    condition = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1
    settings = SampleSettings("ancestral", 1, precision="fp32", channels_last=False, device="cpu")
    drawn = generate(loaded.network, loaded.config, 2, seed=7, settings=settings, condition=condition, progress=False)
    x_t = StackedRandomGenerator(7, 2).randn((3, 16, 16))
    abar = float(NoiseSchedule.from_config(cfg.diffusion).alphas_cumprod[-1])
    level = torch.full((2,), abar**0.5)
    with torch.no_grad():
        eps = source(torch.cat([condition, x_t], dim=1), level)
    expected = ((x_t - (1 - abar) ** 0.5 * eps) / abar**0.5).clamp(-1, 1)
    assert torch.allclose(drawn, expected, atol=1e-5)
    with torch.no_grad():
        swapped = source(torch.cat([x_t, condition], dim=1), level)
    assert not torch.allclose(drawn, ((x_t - (1 - abar) ** 0.5 * swapped) / abar**0.5).clamp(-1, 1), atol=1e-3)


def test_sr3_defaults_loss_l1_and_norm_groups_32() -> None:
    unet = {k: v for k, v in SMALL_UNET.items() if k != "norm_groups"}
    data = ddpmcd_config(unet)
    del data["model"]["diffusion"]["loss"]
    cfg = config_from_ddpmcd(data, "sr3")
    assert cfg.diffusion.loss == "l1" and cfg.model.norm_groups == 32


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda d: d["model"]["unet"].pop("inner_channel"), r"'model\.unet\.inner_channel': missing"),
        (lambda d: d["model"]["beta_schedule"]["val"].update(schedule="sigmoid"),
         r"'model\.beta_schedule\.val\.schedule'"),
        (lambda d: d["model"]["diffusion"].update(channels=1), r"'model\.unet\.in_channel' \(3\) must equal"),
        (lambda d: d["model"].update(which_model_G="ddpm"), r"which_model_G"),
        (lambda d: d["model"]["unet"].update(dropout=2.0), r"'model\.unet\.dropout'"),
        (lambda d: d["model"]["unet"].update(norm_groups=0), r"'model\.unet\.norm_groups'"),
    ],
)
def test_ddpmcd_config_errors_are_one_line(tmp_path: Path, edit, pattern: str) -> None:
    data = ddpmcd_config()
    edit(data)
    path = write_commented_json(data, tmp_path / "bad.json")
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_load_config_reads_our_json(tmp_path: Path, cfg: Config) -> None:
    save_config(cfg, tmp_path / "ours.json")
    assert load_config(tmp_path / "ours.json") == cfg
    (tmp_path / "broken.json").write_text('{"model": {\n  "in_channels": 3,,\n}}')
    with pytest.raises(ConfigError, match=r"broken\.json: invalid JSON at line 2"):
        load_config(tmp_path / "broken.json")


# ----------------------------------------------------------------------------- command line (convert,
# sample, chain on DDPM-CD files and converted run directories)


def cli(*argv: object) -> int:
    from diffsat.cli import main

    return main([str(a) for a in argv])


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("sample_*.png"))}


def test_cli_convert_then_sample_and_chain_the_run_dir(tmp_path: Path, capsys) -> None:
    src = save_layout(tmp_path, small_config(), "ddpmcd")
    json_path = write_commented_json(ddpmcd_config(), tmp_path / "ddpm_train.json")
    assert cli("convert", src, "--config", json_path, "--out", tmp_path / "run") == 0
    assert "converted" in capsys.readouterr().out
    common = ["--sampler", "dpm++", "--steps", 20, "--n", 2, "--seed", 3, "--device", "cpu"]
    assert cli("sample", tmp_path / "run", "--out", tmp_path / "a", *common) == 0
    out, err = capsys.readouterr()
    assert "s/image" in out and "20/20" in err and "step" in err  # per-step bar: one batch of 20 steps
    assert cli("sample", src, "--config", json_path, "--out", tmp_path / "b", *common) == 0
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b") and len(pngs(tmp_path / "a")) == 2
    assert cli("chain", tmp_path / "run", "--out", tmp_path / "chain.png", "--sampler", "dpm++", "--steps", 20,
               "--frames", 5, "--device", "cpu") == 0
    assert (tmp_path / "chain.png").stat().st_size > 0 and "20/20" in capsys.readouterr().err


def test_cli_reports_schedule_mismatch_and_samples_with_the_files_schedule(tmp_path: Path, capsys) -> None:
    src = save_layout(tmp_path, small_config(), "ddpmcd")  # linear, T = 100 in the file's buffers
    matching = write_commented_json(ddpmcd_config(), tmp_path / "matching.json")
    other = write_commented_json(ddpmcd_config(schedule="cosine", n_timestep=1000), tmp_path / "cosine.json")
    common = ["--sampler", "ddim", "--steps", 5, "--n", 2, "--device", "cpu"]
    assert cli("sample", src, "--config", matching, "--out", tmp_path / "a", *common) == 0
    assert "warning" not in capsys.readouterr().err
    assert cli("sample", src, "--config", other, "--out", tmp_path / "b", *common) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("diffsat: warning:")]
    assert len(warning) == 1 and "noise schedule mismatch" in warning[0]
    assert "linear (T=100" in warning[0] and "cosine (T=1000" in warning[0]
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b")  # the file's schedule was used, not the config's


def test_cli_refuses_malicious_pickle_in_one_line(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "PWNED"
    _save_pickle({"denoise_fn.init_conv.weight": torch.zeros(1), "x": _SystemPayload(marker)},
                 tmp_path / "evil_gen.pth", "torch")
    json_path = write_commented_json(ddpmcd_config(), tmp_path / "c.json")
    assert cli("convert", tmp_path / "evil_gen.pth", "--config", json_path, "--out", tmp_path / "run") == 2
    assert cli("sample", tmp_path / "evil_gen.pth", "--config", json_path, "--out", tmp_path / "s") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("diffsat: error:") and "refused for safety" in ln for ln in lines)
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_cli_convert_names_the_mismatching_key(tmp_path: Path, capsys) -> None:
    src = save_layout(tmp_path, small_config(), "sr3")
    wrong = write_commented_json(ddpmcd_config(SMALL_UNET | dict(channel_multiplier=[1, 4])), tmp_path / "c.json")
    assert cli("convert", src, "--config", wrong, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("diffsat: error:")
    assert re.search(r"key 'downs\.\d+\.\S+' has shape \(.*\) in the checkpoint but the config builds \(", err)


def test_cli_samples_no_sr3_model_but_upscales_with_it(tmp_path: Path, capsys) -> None:
    conditional = config_from_ddpmcd(sr3_config(8, 32), "sr3")
    torch.save(to_layout(source_net(conditional).state_dict(), "sr3"), tmp_path / "sr3_gen.pth")
    json_path = write_commented_json(sr3_config(8, 32), tmp_path / "sr3.json")
    assert cli("sample", tmp_path / "sr3_gen.pth", "--config", json_path, "--out", tmp_path / "s", "--steps", 2) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "diffsat upscale" in err and not (tmp_path / "s").exists()
    Image.fromarray(np.full((6, 9, 3), 120, dtype=np.uint8)).save(tmp_path / "low.png")
    assert cli("upscale", tmp_path / "sr3_gen.pth", "--config", json_path, "--input", tmp_path / "low.png",
               "--out", tmp_path / "up", "--steps", 2, "--no-progress") == 0
    with Image.open(tmp_path / "up" / "low_x4.png") as img:
        assert img.size == (36, 24) and img.mode == "RGB"
    assert cli("convert", tmp_path / "sr3_gen.pth", "--config", json_path, "--out", tmp_path / "run") == 0
    assert load_model(tmp_path / "run").config.condition == conditional.condition
    assert cli("upscale", tmp_path / "run", "--input", tmp_path / "low.png", "--out", tmp_path / "up2",
               "--steps", 2, "--no-progress") == 0
    with Image.open(tmp_path / "up" / "low_x4.png") as a, Image.open(tmp_path / "up2" / "low_x4.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_paper_preset_builds_the_released_generator() -> None:
    """``configs/paper/ddpmcd_391m.json`` describes exactly the network of the released DDPM-CD file, so a
    converted checkpoint and a model trained from the preset are interchangeable."""
    preset = REPO_ROOT / "configs" / "paper" / "ddpmcd_391m.json"
    if not preset.is_file():
        pytest.skip(f"{preset} not found")
    unet, buffers = to_our_keys(meta_state_dict(reference_keys()))
    cfg = load_config(preset)
    with torch.device("meta"):
        model = build_unet(cfg.model)
    check_state_dict(model, unet, "I190000_E97_gen.pth")
    assert compare_schedule(ddpmcd_buffers(make_betas("linear", 2000, 1e-6, 1e-2)), cfg.diffusion) is None
    assert set(buffers) == set(BUFFER_NAMES)
