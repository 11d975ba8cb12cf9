"""Training: the loss falls on real digits, checkpoints round-trip, resume is exact, errors are clear."""

import functools
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from diffsat import rundir
from diffsat.config import Config, parse_config
from diffsat.data import ImageDataset, load_dataset
from diffsat.errors import CheckpointError, DiffsatError, TrainingDivergedError
from diffsat.models.unet import ModelShapeError
from diffsat.plots import plot_training
from diffsat.rundir import read_metrics
from diffsat.training.ema import EMA
from diffsat.seeding import batch_indices
from diffsat.training.runs import make_trainer
from diffsat.training.trainer import budget_step, lr_at

TINY = tiny_config(data={"limit": 64}, max_steps=6, warmup_steps=2, save_every=3, sample_steps=4, lr=2e-3)


def tiny(**sections) -> Config:
    data = {k: dict(v) for k, v in TINY.items()}
    for section, values in sections.items():
        data[section].update(values)
    return parse_config(data)


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    """64 real MNIST digits from the bundled offline subset (no network)."""
    return load_dataset(tiny().data)


def test_loss_falls_on_real_digits(tmp_path: Path, digits: ImageDataset) -> None:
    cfg = tiny(train={"max_steps": 80, "log_every": 10, "save_every": 1000})
    result = make_trainer(cfg, tmp_path / "run", dataset=digits, on_finish=[plot_training]).run(progress=False)
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert result.step == 80 and result.stopped_by == "max_steps"
    assert last < 0.6 * first, (first, last)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["step"].tolist() == list(range(10, 81, 10))
    assert bool((metrics["images_per_s"] > 0).all()) and bool((metrics["gflops"] > 0).all())
    for name in ("config.json", "model.safetensors", "ema.safetensors", "checkpoints/step-0000080/train_state.pt",
                 "checkpoints/step-0000080/checkpoint.json", "loss.png", "samples/final.png"):
        assert (tmp_path / "run" / name).is_file(), name


def test_resume_is_exact(tmp_path: Path, digits: ImageDataset) -> None:
    cfg = tiny(train={"max_steps": 6, "save_every": 3})
    straight = make_trainer(cfg, tmp_path / "a", dataset=digits)
    straight.run(progress=False)
    half = make_trainer(tiny(train={"max_steps": 3, "save_every": 3}), tmp_path / "b", dataset=digits)
    half.run(progress=False)
    resumed = make_trainer(cfg, tmp_path / "b", resume=True, dataset=digits)
    assert resumed.step == 3
    resumed.run(progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = read_metrics(tmp_path / "b")["step"]
    assert sorted(set(rows.tolist())) == [2.0, 4.0, 6.0]  # no duplicated or lost log rows


def test_checkpoint_round_trip_and_atomic_files(tmp_path: Path, digits: ImageDataset) -> None:
    trainer = make_trainer(tiny(), tmp_path, dataset=digits)
    trainer.run(progress=False)
    state = rundir.load_train_state(tmp_path)
    assert state["step"] == 6 and state["ema_updates"] == 6
    fresh = make_trainer(tiny(), tmp_path, resume=True, dataset=digits)
    for a, b in zip(trainer.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def flatten_to_old_layout(run_dir: Path) -> None:
    """Turn a run into the flat layout written before step directories (train_state.pt beside the weights)."""
    newest = rundir.committed_checkpoints(run_dir)[0]
    shutil.copyfile(newest.file("train_state.pt"), run_dir / "train_state.pt")  # the weights are exported already
    shutil.rmtree(run_dir / "checkpoints")


def test_old_layout_resumes_and_moves_to_step_directories(tmp_path: Path, digits: ImageDataset) -> None:
    make_trainer(tiny(train={"max_steps": 3}), tmp_path / "old", dataset=digits).run(progress=False)
    flatten_to_old_layout(tmp_path / "old")
    make_trainer(tiny(), tmp_path / "old", resume=True, dataset=digits).run(progress=False)
    make_trainer(tiny(), tmp_path / "new", dataset=digits).run(progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "old" / name), load_file(tmp_path / "new" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [c.step for c in rundir.committed_checkpoints(tmp_path / "old")] == [6]
    assert not (tmp_path / "old" / "train_state.pt").exists()  # the flat state is superseded


def test_inconsistent_old_layout_checkpoint_is_refused(tmp_path: Path, digits: ImageDataset) -> None:
    make_trainer(tiny(), tmp_path, dataset=digits).run(progress=False)
    make_trainer(tiny(train={"max_steps": 9}), tmp_path / "other", dataset=digits).run(progress=False)
    flatten_to_old_layout(tmp_path)
    (tmp_path / "ema.safetensors").write_bytes((tmp_path / "other" / "ema.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="holds step 9 but train_state.pt holds step 6"):
        make_trainer(tiny(), tmp_path, resume=True, dataset=digits)


def test_a_new_run_never_overwrites_a_run_with_checkpoints(tmp_path: Path, digits: ImageDataset) -> None:
    make_trainer(tiny(train={"max_steps": 2}), tmp_path, dataset=digits).run(progress=False)
    with pytest.raises(CheckpointError, match=r"already holds a training checkpoint \(.*step-0000002\): continue "
                                              r"it with --resume"):
        make_trainer(tiny(), tmp_path, dataset=digits)


def test_resume_without_checkpoint_and_wrong_shape(tmp_path: Path, digits: ImageDataset) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        make_trainer(tiny(), tmp_path / "empty", resume=True, dataset=digits)
    make_trainer(tiny(), tmp_path / "run", dataset=digits).run(progress=False)
    wider = tiny(model={"base_channels": 16})
    with pytest.raises(CheckpointError, match=r"has shape .* but the config builds"):
        make_trainer(wider, tmp_path / "run", resume=True, dataset=digits)


def test_time_limit_stops_cleanly_with_a_checkpoint_and_annealed(tmp_path: Path, digits: ImageDataset) -> None:
    cfg = tiny(train={"max_steps": 10_000, "time_limit_minutes": 0.02, "save_every": 10_000, "log_every": 1,
                      "lr_schedule": "cosine", "lr_over": "budget"})
    result = make_trainer(cfg, tmp_path, dataset=digits).run(progress=False)
    assert result.stopped_by == "time_limit" and 0 < result.step < 10_000
    assert rundir.load_train_state(tmp_path)["step"] == result.step
    lr = read_metrics(tmp_path)["lr"]
    assert lr[-1] < 0.02 * cfg.train.lr and lr[-1] < lr[len(lr) // 2]  # near zero at the limit, falling


def test_ctrl_c_saves_before_stopping(tmp_path: Path, digits: ImageDataset, monkeypatch) -> None:
    trainer = make_trainer(tiny(train={"max_steps": 50, "save_every": 1000}), tmp_path, dataset=digits)
    original = trainer.train_step

    def interrupted():
        if trainer.step == 4:
            raise KeyboardInterrupt
        return original()

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(progress=False)
    assert rundir.load_train_state(tmp_path)["step"] == 4


def test_lr_schedules() -> None:
    constant = tiny(train={"lr": 1.0, "warmup_steps": 4, "max_steps": 14}).train
    assert [lr_at(s, constant) for s in (0, 3, 10)] == [0.25, 1.0, 1.0]
    cosine = constant.model_copy(update={"lr_schedule": "cosine"})
    assert lr_at(4, cosine) == pytest.approx(1.0)
    assert lr_at(9, cosine) == pytest.approx(0.5)
    assert lr_at(14, cosine) == pytest.approx(0.0, abs=1e-12)


def test_a_time_limited_schedule_runs_over_the_budget_spent() -> None:
    """By default the schedule follows the steps; with ``lr_over: budget`` and a time limit it follows the
    fraction of the budget spent, steps or time, whichever is further: a run the limit stops has annealed, and
    one that reaches max_steps first is unchanged."""
    cosine = tiny(train={"lr": 1.0, "warmup_steps": 4, "max_steps": 14, "lr_schedule": "cosine"}).train
    assert lr_at(9, cosine.model_copy(update={"time_limit_minutes": 1.0}), elapsed_s=30.0) == lr_at(9, cosine)
    timed = cosine.model_copy(update={"time_limit_minutes": 1.0, "lr_over": "budget"})
    assert lr_at(9, timed, elapsed_s=0.0) == lr_at(9, cosine)  # time not yet further than the steps
    assert budget_step(2, timed, elapsed_s=30.0) == pytest.approx(7.0)  # half the minute: half of 14 steps
    assert lr_at(2, timed, elapsed_s=30.0) == pytest.approx(lr_at(7, cosine))
    assert lr_at(5, timed, elapsed_s=60.0) == pytest.approx(0.0, abs=1e-12)  # the limit: annealed at step 5
    assert lr_at(0, timed, elapsed_s=1.0) > lr_at(0, cosine)  # warm-up also runs over the budget
    assert budget_step(9, cosine, elapsed_s=1e9) == 9.0  # no limit: the step alone


def test_wsd_holds_the_rate_then_decays_over_the_last_fraction_of_the_budget() -> None:
    wsd = tiny(train={"lr": 1.0, "warmup_steps": 10, "max_steps": 100, "lr_schedule": "wsd",
                      "lr_decay_fraction": 0.2}).train
    assert [lr_at(s, wsd) for s in (0, 9, 50, 80)] == [0.1, 1.0, 1.0, 1.0]  # warm-up, then stable to 80 %
    assert lr_at(90, wsd) == pytest.approx(0.5) and lr_at(100, wsd) == pytest.approx(0.0, abs=1e-12)
    timed = wsd.model_copy(update={"time_limit_minutes": 1.0, "lr_over": "budget"})
    assert lr_at(10, timed, elapsed_s=54.0) == pytest.approx(lr_at(90, wsd))  # 90 % of the minute spent


def test_batches_cover_each_epoch_once() -> None:
    epoch = torch.cat([batch_indices(10, 5, step, seed=0) for step in (0, 1)])
    assert sorted(epoch.tolist()) == list(range(10))
    assert not torch.equal(batch_indices(10, 5, 0, 0), batch_indices(10, 5, 2, 0))  # a new permutation
    assert batch_indices(3, 8, 0, 0).shape == (8,)


def test_ema_warm_up_and_decay() -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # first decay min(0.9, 1/10) = 0.1: shadow = 0.9 * 1
    assert float(ema.model.weight) == pytest.approx(0.9)
    ema.updates = 1000
    ema.update(net)  # decay 0.9: 0.9 * 0.9 + 0.1 * 1
    assert float(ema.model.weight) == pytest.approx(0.91)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path: Path, digits: ImageDataset) -> None:
    trainer = make_trainer(tiny(), tmp_path, dataset=digits)
    trainer.train_step = lambda: (math.nan, 0.0)
    with pytest.raises(TrainingDivergedError, match="loss became nan at step .*lower train.lr"):
        trainer.run(progress=False)
    assert issubclass(TrainingDivergedError, DiffsatError)  # the CLI prints it as one line, no traceback


def test_network_shape_errors_come_before_the_data_is_read(tmp_path: Path) -> None:
    cfg = tiny(model={"image_size": 29}, data={"image_size": 29, "path": str(tmp_path / "no-such-mnist")})
    with pytest.raises(ModelShapeError, match="image size 29 cannot pass 1 down-sampling"):
        make_trainer(cfg, tmp_path / "run")


def test_a_run_samples_its_ema_unless_asked_for_the_trained_weights(tmp_path: Path, digits: ImageDataset) -> None:
    make_trainer(tiny(train={"ema_decay": 0.9}), tmp_path / "run", dataset=digits).run(progress=False)
    files = {name: load_file(tmp_path / "run" / name) for name in ("ema.safetensors", "model.safetensors")}
    assert any(not torch.equal(files["ema.safetensors"][k], v) for k, v in files["model.safetensors"].items())
    for ema, name in ((True, "ema.safetensors"), (False, "model.safetensors")):
        state = rundir.load_model(tmp_path / "run", ema=ema).network.state_dict()
        assert all(torch.equal(state[k], v) for k, v in files[name].items()), name


class _Recorder:
    def __init__(self) -> None:
        self.scalars, self.images = [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_images(self, tag, images, step):
        self.images.append((tag, tuple(images.shape), float(images.min()), float(images.max()), step))

    def flush(self):
        pass

    def close(self):
        pass


def test_tensorboard_mirrors_metrics_and_grids(tmp_path: Path, digits: ImageDataset) -> None:
    from diffsat.training.tensorboard import TensorBoardLog

    trainer = make_trainer(tiny(train={"sample_every": 3}), tmp_path, dataset=digits)
    recorder = _Recorder()
    trainer.tensorboard = TensorBoardLog(tmp_path, writer=recorder)
    trainer.run(progress=False)
    tags = {tag for tag, _, _ in recorder.scalars}
    assert {"train/loss", "train/lr", "train/images_per_s", "train/gflops"} <= tags
    assert [s for t, _, s in recorder.scalars if t == "train/loss"] == [2, 4, 6]
    assert [(step, shape) for _, shape, _, _, step in recorder.images] == [(3, (9, 1, 28, 28)), (6, (9, 1, 28, 28)),
                                                                        (6, (9, 1, 28, 28))]  # periodic, final
    assert all(0.0 <= lo and hi <= 1.0 for _, _, lo, hi, _ in recorder.images)


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path: Path, digits: ImageDataset, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(Exception, match=r'pip install "diffsat\[tensorboard\]"'):
        make_trainer(tiny(train={"tensorboard": True}), tmp_path, dataset=digits)


def test_flop_count_includes_attention() -> None:
    """The CPU flash-attention kernel is counted: 1x1 convs (forward + 2 backward) plus attention, 2 batched
    matmuls of 2 n hw^2 c FLOP forward and 5 backward (FlopCounterMode's sdpa formulas)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from diffsat.models.layers import SelfAttention
    from diffsat.training.throughput import train_step_flops

    attn = SelfAttention(8, norm_groups=4).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flops = train_step_flops(lambda: attn(x).square().sum())
    n, c, hw = 2, 8, 49
    convs = 3 * (2 * n * hw * c * (3 * c) + 2 * n * hw * c * c)
    assert flops == convs + 7 * (2 * n * hw * hw * c)


# ------------------------------------------------------------------------------ class-conditional training


def two_tone_classes(n: int = 32) -> ImageDataset:
    """Class 0: dark images (-0.8), class 1: bright images (+0.8), alternating; 28 px, one channel."""
    labels = torch.arange(n) % 2
    images = torch.where(labels.view(-1, 1, 1, 1) == 1, 0.8, -0.8).expand(n, 1, 28, 28).contiguous()
    return ImageDataset(images.float(), labels, "two tones")


def test_the_loss_sees_each_image_with_its_label(tmp_path: Path) -> None:
    cfg = tiny(model={"num_classes": 3}, train={"batch_size": 16, "label_dropout": 0.25})
    trainer = make_trainer(cfg, tmp_path / "run", dataset=two_tone_classes())  # classes 0 and 1 only, of 3
    with torch.no_grad():
        trainer.model.label_emb.weight.normal_()  # so that every row passes a gradient on
    trainer.forward_loss(trainer.task.batch(0))[0].backward()
    grad = trainer.model.label_emb.weight.grad.abs().sum(dim=1)
    assert grad[0] > 0 and grad[1] > 0 and grad[3] > 0  # the two classes and "no class" (label dropout)
    assert grad[2] == 0  # a class without images gets no gradient
    batch = trainer.task.batch(0)
    shuffled = type(batch)(batch.x, batch.labels.flip(0))
    seeded = functools.partial(torch.Generator().manual_seed, 0)
    assert trainer.task.loss(trainer.model, batch, seeded())[0] != trainer.task.loss(trainer.model, shuffled, seeded())[0]


def test_label_dropout_replaces_the_set_fraction_with_no_class(tmp_path: Path) -> None:
    cfg = tiny(model={"num_classes": 2}, train={"batch_size": 64, "label_dropout": 0.25})
    trainer = make_trainer(cfg, tmp_path / "run", dataset=two_tone_classes(64))
    dropped = []
    for step in range(20):
        batch = trainer.task.batch(step)
        x, labels = batch.x, batch.labels
        assert labels.shape == (64,) and labels.dtype == torch.int64
        kept = labels != 2
        assert torch.equal(labels[kept], torch.where(x[kept].mean(dim=(1, 2, 3)) > 0, 1, 0))  # true labels kept
        dropped.append(float((~kept).double().mean()))
    assert abs(sum(dropped) / len(dropped) - 0.25) < 0.05
    assert torch.equal(trainer.task.batch(3).labels, trainer.task.batch(3).labels)  # seeded by (seed, step)


def test_conditional_resume_is_exact(tmp_path: Path) -> None:
    data = two_tone_classes()
    cfg = tiny(model={"num_classes": 2}, train={"max_steps": 6, "save_every": 3})
    make_trainer(cfg, tmp_path / "a", dataset=data).run(progress=False)
    make_trainer(tiny(model={"num_classes": 2}, train={"max_steps": 3, "save_every": 3}), tmp_path / "b",
            dataset=data).run(progress=False)
    make_trainer(cfg, tmp_path / "b", resume=True, dataset=data).run(progress=False)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert "label_emb.weight" in a and all(torch.equal(a[k], b[k]) for k in a)
    assert not bool((a["label_emb.weight"] == 0).all())  # the class embedding was trained


def test_conditional_model_needs_labelled_data(tmp_path: Path, digits: ImageDataset) -> None:
    from diffsat.data import DataError

    unlabelled = ImageDataset(digits.tiles, None, "unlabelled digits")
    with pytest.raises(DataError, match="model.num_classes=10 needs class labels, but .* has none"):
        make_trainer(tiny(model={"num_classes": 10}), tmp_path / "a", dataset=unlabelled)
    with pytest.raises(DataError, match="labels up to 9 but model.num_classes=5: set model.num_classes to at least 10"):
        make_trainer(tiny(model={"num_classes": 5}), tmp_path / "b", dataset=digits)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path: Path, digits: ImageDataset) -> None:
    """``train.compile`` runs the same optimisation: equal losses and weights after 3 steps (to float
    tolerance: inductor fuses and reorders the arithmetic)."""
    runs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        cfg = tiny(train={"max_steps": 3, "save_every": 3, "compile": compile_})
        trainer = make_trainer(cfg, tmp_path / name, dataset=digits)
        assert hasattr(trainer.net, "_orig_mod") == compile_  # torch.compile's wrapper
        runs[name] = (trainer.run(progress=False).losses, load_file(tmp_path / name / "model.safetensors"))
    (eager_losses, eager_w), (compiled_losses, compiled_w) = runs["eager"], runs["compiled"]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for key in eager_w:
        torch.testing.assert_close(compiled_w[key], eager_w[key], rtol=1e-3, atol=1e-5)


def test_compile_without_a_cpp_compiler_is_a_clear_error(tmp_path: Path, digits: ImageDataset, monkeypatch) -> None:
    from diffsat.training import trainer

    monkeypatch.setattr(trainer.shutil, "which", lambda name: None)
    with pytest.raises(DiffsatError, match=r"train\.compile needs a C\+\+ compiler.*train\.compile=false"):
        make_trainer(tiny(train={"compile": True}), tmp_path / "run", dataset=digits)
