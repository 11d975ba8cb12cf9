"""``precision auto`` (diffsat.precision): the decision from timings, the cache and its key, the printed line,
and how far bf16 autocast moves a small network's output from fp32."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, train_tiny_run

from diffsat import precision
from diffsat.config import Config, ModelConfig
from diffsat.diffusion.objective import bf16_difference
from diffsat.models.unet import build_unet
from diffsat.precision import (
    PrecisionChoice,
    Timings,
    choose_precision,
    decide,
    inference_timer,
    key_id,
    precision_key,
    resolve_precision,
    training_timer,
)
from diffsat.sampling import SampleSettings, generate

MODEL = ModelConfig(in_channels=1, out_channels=1, base_channels=16, channel_mults=(1, 2), res_blocks=1,
                    attn_resolutions=(4,), norm_groups=8, image_size=8)


@pytest.fixture()
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet(MODEL).eval()


class FakeTimer:
    """Injected timings: ``seconds[bf16]``; records every call."""

    def __init__(self, fp32_s: float, bf16_s: float) -> None:
        self.seconds, self.calls = {False: fp32_s, True: bf16_s}, []

    def __call__(self, bf16: bool) -> float:
        self.calls.append(bf16)
        return self.seconds[bf16]


KEY = {"device": "cpu", "cpu": "AMD EPYC; avx2 avx512f avx512_bf16", "threads": 2, "torch": "2.13.0",
       "network": "SR3UNet 1000 params abc", "input_shape": [4, 1, 8, 8], "mode": "inference"}


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [
    (9.0, 4.05, True),    # the 391M forward on the 2-core AMD Zen 4: 2.2x
    (19.21, 23.03, False),  # the same on the 2-core Intel without AMX: 0.83x
    (1.0, 1.0, False), (1.19, 1.0, False), (1.2, 1.0, True),  # the margin: bf16 must be >= 1.2x faster
])
def test_decide_takes_bf16_only_when_it_is_clearly_faster(fp32_s: float, bf16_s: float, expected: bool) -> None:
    assert decide(Timings(fp32_s, bf16_s)) is expected
    assert Timings(fp32_s, bf16_s).speedup == pytest.approx(fp32_s / bf16_s)


def test_cache_miss_measures_once_then_hits(tmp_path) -> None:
    cache = tmp_path / "precision.json"
    timer = FakeTimer(2.2, 1.0)
    first = choose_precision(KEY, timer, device_type="cpu", native_bf16=True, cache_file=cache)
    assert first.bf16 and timer.calls == [False, True]
    stored = json.loads(cache.read_text())
    assert list(stored) == [key_id(KEY)]
    assert stored[key_id(KEY)] == {**KEY, "fp32_s": 2.2, "bf16_s": 1.0}

    again = choose_precision(KEY, FakeTimer(1.0, 5.0), device_type="cpu", native_bf16=True, cache_file=cache)
    assert again == first  # the cached timings decide; the new timer is never called

    other = {**KEY, "input_shape": [8, 1, 8, 8]}  # another batch: another key, measured and added
    slower = FakeTimer(1.0, 2.0)
    assert not choose_precision(other, slower, device_type="cpu", native_bf16=True, cache_file=cache).bf16
    assert slower.calls == [False, True] and len(json.loads(cache.read_text())) == 2


def test_corrupt_cache_counts_as_empty(tmp_path) -> None:
    cache = tmp_path / "precision.json"
    cache.write_text("{not json")
    assert choose_precision(KEY, FakeTimer(3.0, 1.0), device_type="cpu", native_bf16=True, cache_file=cache).bf16
    assert key_id(KEY) in json.loads(cache.read_text())


@pytest.mark.parametrize("device_type, native, expected", [("cuda", True, True), ("cuda", False, False),
                                                           ("cpu", False, False)])
def test_cuda_and_cpus_without_bf16_are_not_measured(tmp_path, device_type: str, native: bool, expected: bool) -> None:
    timer = FakeTimer(9.0, 1.0)
    choice = choose_precision(KEY, timer, device_type=device_type, native_bf16=native, cache_file=tmp_path / "c.json")
    assert choice.bf16 is expected and choice.timings is None and timer.calls == []
    assert not (tmp_path / "c.json").exists()
    assert choice.line().startswith(f"precision auto: {'bf16 autocast' if expected else 'fp32'} (")


def test_the_printed_line(tmp_path) -> None:
    path = tmp_path / "precision.json"
    assert (PrecisionChoice(True, Timings(2.2, 1.0), path).line()
            == f"precision auto: bf16 autocast 2.2x faster than fp32 here (cached in {path})")
    assert (PrecisionChoice(False, Timings(1.0, 2.0), path).line()
            == f"precision auto: fp32 (bf16 autocast ran at 0.50x its speed here; cached in {path})")


def test_key_names_machine_network_shape_and_mode(net) -> None:
    key = precision_key(torch.device("cpu"), net, (4, 1, 8, 8), training=False)
    assert key["device"] == "cpu" and key["torch"] == torch.__version__ and key["threads"] == torch.get_num_threads()
    assert key["input_shape"] == [4, 1, 8, 8] and key["mode"] == "inference"
    assert f"{sum(p.numel() for p in net.parameters())} params" in key["network"]
    assert precision_key(torch.device("cpu"), net, (4, 1, 8, 8), training=True)["mode"] == "training"
    wider = build_unet(MODEL.model_copy(update={"base_channels": 8}))
    assert precision_key(torch.device("cpu"), wider, (4, 1, 8, 8), False)["network"] != key["network"]
    assert key_id(key) == key_id(dict(reversed(list(key.items()))))  # order-free


def test_precision_auto_times_the_real_network_once(net, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # measure even where this CPU lacks bf16
    precision_cache = tmp_path / "precision.json"  # this test's own cache (other tests add to the session's)
    monkeypatch.setattr(precision, "precision_cache_file", lambda: precision_cache)
    lines: list[str] = []
    for training in (False, True, False):
        resolve_precision("auto", net, (2, 1, 8, 8), torch.device("cpu"), channels_last=True, training=training,
                          announce=lines.append)
    entries = json.loads(precision_cache.read_text())
    assert sorted(e["mode"] for e in entries.values()) == ["inference", "training"]
    assert all(e["fp32_s"] > 0 and e["bf16_s"] > 0 for e in entries.values())
    assert len(lines) == 3 and all(line.startswith("precision auto: ") for line in lines)
    assert lines[0] == lines[2] and f"cached in {precision_cache}" in lines[0]
    assert all(p.grad is None for p in net.parameters())  # the training timer leaves no gradients


def test_generate_resolves_auto_and_prints_the_line(net, monkeypatch, capsys) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(precision, "decide", lambda timings, margin=1.2: False)  # fp32: equal to precision fp32
    config = Config(model=MODEL, diffusion={"timesteps": 100}, data={"image_size": 8, "channels": 1})
    settings = SampleSettings("dpm++", 3, batch_size=2, device="cpu")
    auto = generate(net, config, 2, 0, settings, progress=True)
    assert "precision auto: fp32" in capsys.readouterr().out
    fp32 = generate(net, config, 2, 0, SampleSettings("dpm++", 3, batch_size=2, device="cpu", precision="fp32"),
                    progress=False)
    torch.testing.assert_close(auto, fp32, rtol=0, atol=0)


def test_bf16_stays_within_tolerance_of_fp32(net) -> None:
    """The check of benchmarks/sampling_391m.py on a small network: bf16 autocast moves the output by about
    1 % (the 391M network: 1.0-1.1 % of its largest value) and the clipped x0 estimate by a few hundredths of
    the [-1, 1] range at level 0.5."""
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    net = net.to(memory_format=torch.channels_last)
    mid = bf16_difference(net, x, 0.5)
    assert 0 < mid["output_rel_max"] < 0.03 and 0 < mid["output_rel_rms"] < 0.03
    assert mid["x0_max_abs"] < 0.05 and mid["x0_mean_abs"] < 0.01
    low = bf16_difference(net, x, 0.05)  # x0 = (x_t - sigma eps) / alpha: eps errors amplified 20x
    assert mid["x0_max_abs"] < low["x0_max_abs"] < 0.5


def test_train_precision_auto_measures_the_training_step(tmp_path, monkeypatch, precision_cache, capsys) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    train_tiny_run(tmp_path, tiny_config(precision="auto", max_steps=2))
    assert "precision auto: " in capsys.readouterr().out
    entries = json.loads(precision_cache.read_text()).values()
    assert [8, 1, 28, 28] in [e["input_shape"] for e in entries if e["mode"] == "training"]


def test_timers_run_the_call_they_are_given(net) -> None:
    calls = []

    def loss() -> torch.Tensor:
        calls.append(torch.is_autocast_cpu_enabled())
        return net(torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)).square().mean()

    timer = training_timer(net, (2, 1, 8, 8), torch.device("cpu"), channels_last=False, loss=loss)
    assert timer(True) > 0 and calls and all(calls)  # the trainer's own loss, under autocast
    assert all(p.grad is None for p in net.parameters())
    seen = []
    encoder = torch.nn.Conv2d(3, 4, 3)
    encoder.register_forward_hook(lambda module, args, out: seen.append(len(args)))
    assert inference_timer(encoder, (2, 3, 8, 8), torch.device("cpu"), False, with_level=False)(False) > 0
    assert seen and set(seen) == {1}  # net(x) alone: an encoder or decoder takes no noise level
