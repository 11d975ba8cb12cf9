"""The metric suite behind ``diffsat evaluate``: samples against real images, each number beside a real baseline.

Protocol. The reference set is split once (seeded) into a *baseline* part of ``m = min(N_samples, N_ref // 2)``
real images and an *evaluation* part (the rest). Every metric is computed twice against the same evaluation
part: once for the samples (the number) and once for the baseline part (what real images of the same count
score). A model is as good as real data on a metric when its number is as close as the baseline's.

- Digits (grey images, or ``kind="digits"``), with the project's MNIST classifier: recognisable fraction
  (max class probability >= 0.9), classes present, class spread (histogram entropy / log 10) and class ratio
  (max / min count), and FID, KID (mean +- standard deviation over subsets), precision and recall on its
  128-d penultimate features.
- Other images (``kind="images"``): multi-scale SWD (x1e3) per pyramid level and their mean.
- With an Inception network (optional, any kind): FID, KID, precision and recall on its 2048-d pool3 features,
  and one more FID of all samples against all of the reference (no baseline part held back): pytorch-fid's
  number for the same two folders when the reference images have the samples' size (a reference of another
  size is resized to the samples' first, where pytorch-fid would feed each at its own size).
- With a training set: memorisation in pixel space (L2): each image's nearest training image, as a ratio to
  the same distance for the held-out evaluation part (~1 healthy, << 1 copies), and the fraction of
  near-copies (closer than the 1st percentile of held-out distances; ~0.01 for real held-out images).
  The reference must therefore be held-out data, disjoint from the training set.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from diffsat.evaluation.classifier import DigitClassifier, digit_metrics
from diffsat.evaluation.fid import fid_from_features
from diffsat.evaluation.image_sets import EvaluationError, ImageSet
from diffsat.evaluation.inception import FIDInceptionV3
from diffsat.evaluation.kid import kid_subset_values
from diffsat.evaluation.memorisation import memorisation_report
from diffsat.evaluation.knn_precision_recall import precision_recall
from diffsat.evaluation.swd import sliced_wasserstein_distance

MIN_SAMPLES = 10
"""Fewest samples (and real images per reference part) the statistics are computed on."""

KINDS = ("auto", "digits", "images")


@dataclass(frozen=True)
class Metric:
    """One table row: ``value`` for the samples, ``baseline`` for real images; ``better`` says how to read it;
    ``error`` / ``baseline_error``: +- uncertainty where one is known (KID: the standard deviation of the
    per-subset estimates, a conservative error of their mean because the subsets share images)."""

    key: str
    label: str
    value: float
    baseline: float
    better: str
    error: float | None = None
    baseline_error: float | None = None


@dataclass(frozen=True)
class EvalSettings:
    """``kind``: auto (digits for grey images) | digits | images; ``seed``: reference split, KID subsets and SWD
    directions; ``threshold``: the recognisable confidence; KID subsets and size; ``pr_k``: k-NN radius."""

    kind: str = "auto"
    seed: int = 0
    threshold: float = 0.9
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    progress: bool = True


@dataclass
class Evaluation:
    """The result: ``metrics`` (table rows), ``details`` (per-metric dicts), ``sets`` (what was compared)."""

    kind: str
    metrics: list[Metric]
    details: dict[str, Any] = field(default_factory=dict)
    sets: dict[str, Any] = field(default_factory=dict)
    settings: EvalSettings = field(default_factory=EvalSettings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; non-finite floats (e.g. the class ratio with a class missing) become ``None``."""
        metrics = {m.key: {k: v for k, v in asdict(m).items() if k != "key" and v is not None} for m in self.metrics}
        out = {"kind": self.kind, "sets": self.sets, "settings": asdict(self.settings), "metrics": metrics,
               "details": self.details}
        return _finite(out)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def resolve_kind(kind: str, channels: int) -> str:
    """``auto`` -> ``digits`` for 1-channel images, else ``images``."""
    if kind not in KINDS:
        raise EvaluationError(f"unknown kind '{kind}': one of {', '.join(KINDS)}")
    return ("digits" if channels == 1 else "images") if kind == "auto" else kind


def split_reference(n_ref: int, n_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint sorted index sets ``(baseline (m,), evaluation (n_ref - m,))`` with ``m = min(n_samples, n_ref // 2)``,
    from a permutation seeded with ``seed``."""
    m = min(n_samples, n_ref // 2)
    if m < MIN_SAMPLES:
        raise EvaluationError(
            f"the reference set has {n_ref} images; at least {2 * MIN_SAMPLES} are needed (a real baseline "
            f"part and an evaluation part of >= {MIN_SAMPLES} each)"
        )
    perm = torch.randperm(n_ref, generator=torch.Generator().manual_seed(seed))
    return perm[:m].sort().values, perm[m:].sort().values


def feature_rows(tag: str, what: str, samples: torch.Tensor, baseline: torch.Tensor, reference: torch.Tensor,
                 s: EvalSettings) -> list[Metric]:
    """FID, KID (mean +- std over subsets), precision, recall of ``samples`` ``(N, D)`` and of ``baseline``
    ``(M, D)`` features, each against ``reference`` ``(R, D)``; keys ``fid_<tag>`` etc."""
    kid, kid_b = (kid_subset_values(f, reference, s.kid_subsets, s.kid_subset_size, seed=s.seed)
                  for f in (samples, baseline))
    pr, pr_b = precision_recall(reference, samples, s.pr_k), precision_recall(reference, baseline, s.pr_k)
    return [
        Metric(f"fid_{tag}", f"FID ({what})", fid_from_features(samples, reference),
               fid_from_features(baseline, reference), "lower"),
        Metric(f"kid_{tag}", f"KID ({what})", float(kid.mean()), float(kid_b.mean()), "lower",
               _std(kid), _std(kid_b)),
        Metric(f"precision_{tag}", f"precision ({what}, k={s.pr_k})", pr[0], pr_b[0], "higher"),
        Metric(f"recall_{tag}", f"recall ({what}, k={s.pr_k})", pr[1], pr_b[1], "higher"),
    ]


def pytorch_fid_row(samples: torch.Tensor, reference: torch.Tensor) -> Metric:
    """FID of all ``samples`` ``(N, 2048)`` against all ``reference`` ``(R, 2048)`` Inception features: the number
    ``python -m pytorch_fid SAMPLES REAL`` prints for the same images (REAL at the samples' size); no real
    baseline (nothing is held back)."""
    return Metric("fid_inception_all", "FID (Inception pool3, all samples vs all of REAL: pytorch-fid's number)",
                  fid_from_features(samples, reference), math.nan, "lower")


def _std(values: torch.Tensor) -> float:
    return float(values.std(unbiased=True)) if len(values) > 1 else 0.0


def class_match_row(probs: torch.Tensor, labels: torch.Tensor, baseline_probs: torch.Tensor,
                    baseline_labels: torch.Tensor | None) -> Metric:
    """Fraction of class-conditional samples the classifier puts in the class they were drawn for (probs
    ``(N, 10)``, labels ``(N,)``), beside the classifier's accuracy on the real baseline digits."""
    def accuracy(p: torch.Tensor, y: torch.Tensor) -> float:
        return float((p.argmax(dim=1) == y).double().mean())

    base = math.nan if baseline_labels is None else accuracy(baseline_probs, baseline_labels)
    return Metric("class_match", "drawn class recognised (argmax)", accuracy(probs, labels), base, "higher")


def digit_rows(classifier: DigitClassifier, samples: ImageSet, baseline: torch.Tensor, reference: torch.Tensor,
               s: EvalSettings, baseline_labels: torch.Tensor | None = None) -> tuple[list[Metric], dict[str, Any]]:
    """Classifier metrics of digit images (``samples.images`` ``(N, C, H, W)`` in ``[-1, 1]``) and their real
    baseline; with ``samples.labels`` (class-conditional samples) also how often the drawn class is recognised."""
    probs, baseline_probs = classifier.predict_proba(samples.images), classifier.predict_proba(baseline)
    ds, db = digit_metrics(probs, s.threshold), digit_metrics(baseline_probs, s.threshold)
    rows = [
        Metric("recognisable", f"recognisable (confidence >= {s.threshold:g})", ds["recognisable"],
               db["recognisable"], "higher"),
        Metric("classes_present", "classes present", ds["classes_present"], db["classes_present"], "10"),
        Metric("class_entropy", "class spread (entropy / log 10)", ds["class_entropy"], db["class_entropy"],
               "1 = uniform"),
        Metric("class_ratio", "class ratio (max / min count)", ds["class_ratio"], db["class_ratio"], "1 = uniform"),
    ]
    if samples.labels is not None:
        rows.append(class_match_row(probs, samples.labels, baseline_probs, baseline_labels))
    feats = [classifier.features(x) for x in (samples.images, baseline, reference)]
    rows += feature_rows("classifier", "classifier features", *feats, s)
    return rows, {"digits": {"samples": ds, "baseline": db}}


def swd_rows(samples: torch.Tensor, baseline: torch.Tensor, reference: torch.Tensor,
             s: EvalSettings) -> tuple[list[Metric], dict[str, Any]]:
    """Multi-scale SWD (x1e3): one row per pyramid level and the mean, samples and baseline vs reference."""
    a = sliced_wasserstein_distance(samples, reference, seed=s.seed)
    b = sliced_wasserstein_distance(baseline, reference, seed=s.seed)
    rows = [Metric(f"swd_{res}", f"SWD x1e3 at {res} px", va, vb, "lower")
            for res, va, vb in zip(a.resolutions, a.per_level, b.per_level)]
    rows.append(Metric("swd", "SWD x1e3 (mean of levels)", a.mean, b.mean, "lower"))
    details = {"resolutions": list(a.resolutions), "samples": list(a.per_level), "baseline": list(b.per_level)}
    return rows, {"swd": details}


def memorisation_rows(samples: torch.Tensor, baseline: torch.Tensor, heldout: torch.Tensor,
                      train: torch.Tensor) -> tuple[list[Metric], dict[str, Any]]:
    """Pixel-space nearest-training-neighbour statistics of the samples and of the real baseline images,
    both scaled by the held-out ``heldout`` images' distances to ``train``."""
    rep = memorisation_report(samples, train, heldout)
    rep_b = memorisation_report(baseline, train, heldout, copy_threshold=rep["copy_threshold"])
    if rep["copy_threshold"] <= 1e-6:
        warnings.warn(
            "at least 1 % of the reference images are also in the training set, so the memorisation numbers "
            "mean nothing: give held-out real images as --reference (e.g. the MNIST test split)", stacklevel=2
        )
    rows = [
        Metric("memorisation_ratio", "memorisation ratio (NN distance / held-out's)", rep["memorisation_ratio"],
               rep_b["memorisation_ratio"], "~1 (<< 1: copies)"),
        Metric("near_copy_fraction", "near copies (closer than 1 % of held-out)", rep["near_copy_fraction"],
               rep_b["near_copy_fraction"], "~0.01"),
    ]
    return rows, {"memorisation": {"samples": rep, "baseline": rep_b}}


def _check_counts(samples: ImageSet, reference: ImageSet, train: ImageSet | None) -> None:
    if len(samples) < MIN_SAMPLES:
        raise EvaluationError(f"{samples.source}: {len(samples)} samples; at least {MIN_SAMPLES} are needed")
    for other in (reference, train):
        if other is not None and (other.channels, other.size) != (samples.channels, samples.size):
            raise EvaluationError(
                f"{other.source}: images are {other.channels}x{other.size}px but the samples {samples.channels}x"
                f"{samples.size}px; load real sets at the samples' size (diffsat.evaluation.image_sets.load_real)"
            )


def evaluate(
    samples: ImageSet,
    reference: ImageSet,
    train: ImageSet | None = None,
    *,
    classifier: DigitClassifier | None = None,
    inception: FIDInceptionV3 | None = None,
    settings: EvalSettings = EvalSettings(),
) -> Evaluation:
    """All metrics of ``samples`` against ``reference`` (and ``train`` for memorisation), each beside its real
    baseline; see the module docstring. All sets share channels and size. ``classifier`` is required for
    digits; ``inception`` adds Inception FID/KID/precision/recall."""
    _check_counts(samples, reference, train)
    if inception is not None and samples.channels not in (1, 3):
        raise EvaluationError(f"{samples.source}: {samples.channels} bands, but Inception features need grey or RGB "
                              "images; evaluate without --inception (SWD takes any band count)")
    kind = resolve_kind(settings.kind, samples.channels)
    base_idx, eval_idx = split_reference(len(reference), len(samples), settings.seed)
    base, ref, x = reference.images[base_idx], reference.images[eval_idx], samples.images
    if kind == "digits":
        if classifier is None:
            raise EvaluationError("digit metrics need the digit classifier (diffsat evaluate --train-classifier)")
        base_labels = None if reference.labels is None else reference.labels[base_idx]
        metrics, details = digit_rows(classifier, samples, base, ref, settings, base_labels)
    else:
        metrics, details = swd_rows(x, base, ref, settings)
    if inception is not None:
        feats = [inception.features(t, progress=settings.progress) for t in (x, base, ref)]
        metrics += feature_rows("inception", "Inception pool3", *feats, settings)
        metrics.append(pytorch_fid_row(feats[0], torch.cat(feats[1:])))
    if train is not None:
        rows, more = memorisation_rows(x, base, ref, train.images)
        metrics, details = metrics + rows, {**details, **more}
    sets = {
        "samples": {"source": samples.source, "n": len(samples), "channels": samples.channels, "size": samples.size},
        "reference": {"source": reference.source, "n_evaluation": len(eval_idx), "n_baseline": len(base_idx)},
        "train": None if train is None else {"source": train.source, "n": len(train)},
    }
    return Evaluation(kind, metrics, details, sets, settings)
