"""The metric suite: reference split, baselines, digit/SWD/memorisation rows, JSON form."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from diffsat.evaluation import (
    DigitClassifier,
    EvalSettings,
    EvaluationError,
    ImageSet,
    evaluate,
)
from diffsat.evaluation.suite import MIN_SAMPLES, resolve_kind, split_reference

FAST = EvalSettings(kid_subsets=5, kid_subset_size=50)


def _blobs(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random images in [-1, 1]: noise blurred by a 5x5 box filter, with per-image contrast."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(n, channels, size, size, generator=g), 5, 1, 2) * 3
    return x.clamp(-1, 1)


def test_reference_split_is_disjoint_seeded_and_sized_by_the_samples() -> None:
    base, rest = split_reference(100, 30, seed=1)
    assert len(base) == 30 and len(rest) == 70
    assert sorted(torch.cat([base, rest]).tolist()) == list(range(100))
    assert torch.equal(base, split_reference(100, 30, seed=1)[0])
    assert not torch.equal(base, split_reference(100, 30, seed=2)[0])
    assert len(split_reference(100, 500, seed=0)[0]) == 50  # at most half of the reference
    with pytest.raises(EvaluationError, match="at least 20"):
        split_reference(2 * MIN_SAMPLES - 1, 100, seed=0)


def test_kind_resolution() -> None:
    assert resolve_kind("auto", 1) == "digits" and resolve_kind("auto", 3) == "images"
    assert resolve_kind("images", 1) == "images"
    with pytest.raises(EvaluationError):
        resolve_kind("faces", 3)


def test_samples_that_are_the_baseline_images_score_exactly_the_baseline() -> None:
    torch.manual_seed(0)
    classifier = DigitClassifier().eval()
    reference = ImageSet(_blobs(120, 1, 28, seed=0), None, "real")
    base_idx, _ = split_reference(120, 40, FAST.seed)
    samples = ImageSet(reference.images[base_idx], None, "copies of the baseline part")
    result = evaluate(samples, reference, classifier=classifier, settings=FAST)
    assert result.kind == "digits"
    keys = [m.key for m in result.metrics]
    assert keys == ["recognisable", "classes_present", "class_entropy", "class_ratio", "fid_classifier",
                    "kid_classifier", "precision_classifier", "recall_classifier"]
    for m in result.metrics:
        assert m.value == m.baseline or (math.isinf(m.value) and math.isinf(m.baseline)), m.key
    kid = next(m for m in result.metrics if m.key == "kid_classifier")
    assert kid.error is not None and kid.error > 0 and kid.error == kid.baseline_error
    assert result.sets["reference"] == {"source": "real", "n_evaluation": 80, "n_baseline": 40}


def test_digits_need_the_classifier_and_sets_must_match() -> None:
    reference = ImageSet(_blobs(40, 1, 28, seed=0), None, "real")
    samples = ImageSet(_blobs(MIN_SAMPLES, 1, 28, seed=1), None, "fake")
    with pytest.raises(EvaluationError, match="--train-classifier"):
        evaluate(samples, reference, settings=FAST)
    with pytest.raises(EvaluationError, match="at least 10"):
        evaluate(ImageSet(samples.images[:3], None, "few"), reference, settings=FAST)
    with pytest.raises(EvaluationError, match="1x32px but the samples 1x28px"):
        evaluate(samples, ImageSet(_blobs(40, 1, 32, seed=0), None, "real 32"), settings=FAST)


def test_swd_grows_with_blur_and_the_baseline_stays_near_real() -> None:
    reference = ImageSet(_blobs(160, 3, 32, seed=0), None, "real")
    sharp = ImageSet(_blobs(60, 3, 32, seed=1), None, "same distribution")
    blurred = ImageSet(F.avg_pool2d(sharp.images, 3, 1, 1, count_include_pad=False), None, "blurred")
    good = evaluate(sharp, reference, settings=FAST)
    bad = evaluate(blurred, reference, settings=FAST)
    assert good.kind == "images" and [m.key for m in good.metrics] == ["swd_32", "swd_16", "swd"]
    g, b = ({m.key: m for m in r.metrics} for r in (good, bad))
    assert g["swd"].baseline == b["swd"].baseline  # same reference split, same real baseline
    assert b["swd"].value > 1.5 * g["swd"].value
    assert g["swd"].value < 2 * g["swd"].baseline
    assert g["swd"].value == pytest.approx(sum(g[k].value for k in ("swd_32", "swd_16")) / 2)


def test_memorisation_rows_flag_copies_and_read_about_1_for_fresh_images() -> None:
    reference = ImageSet(_blobs(200, 3, 16, seed=0), None, "held-out real")
    train = ImageSet(_blobs(100, 3, 16, seed=1), None, "train")
    copies = ImageSet(train.images[:50], None, "copies")
    result = evaluate(copies, reference, train, settings=FAST)
    rows = {m.key: m for m in result.metrics}
    assert rows["memorisation_ratio"].value < 0.01 and rows["near_copy_fraction"].value == 1.0
    assert 0.8 < rows["memorisation_ratio"].baseline < 1.25 and rows["near_copy_fraction"].baseline <= 0.1
    pairs = result.details["memorisation"]["samples"]["closest_pairs"]
    assert all(train_index == sample_index for sample_index, train_index, _ in pairs)  # copies[i] is train[i]
    with pytest.warns(UserWarning, match="also in the training set"):
        evaluate(copies, ImageSet(torch.cat([train.images, reference.images]), None, "leaky"), train,
                 settings=FAST)


def test_to_dict_is_strict_json_with_non_finite_numbers_as_null() -> None:
    torch.manual_seed(0)
    reference = ImageSet(_blobs(60, 1, 28, seed=0), None, "real")
    samples = ImageSet(-torch.ones(20, 1, 28, 28), None, "blank")  # one class only: class ratio infinite
    result = evaluate(samples, reference, classifier=DigitClassifier().eval(), settings=FAST)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["metrics"]["class_ratio"]["value"] is None
    assert data["metrics"]["classes_present"]["value"] == 1
    assert data["settings"]["kid_subsets"] == 5 and data["kind"] == "digits"
    assert data["details"]["digits"]["samples"]["histogram"][0] + sum(data["details"]["digits"]["samples"]["histogram"][1:]) == 20


def test_class_conditional_samples_are_scored_against_the_class_they_were_drawn_for() -> None:
    torch.manual_seed(0)
    classifier = DigitClassifier().eval()
    reference_images = _blobs(120, 1, 28, seed=0)
    predicted = classifier.predict_proba(reference_images).argmax(dim=1)
    reference = ImageSet(reference_images, predicted, "real, labelled as the classifier sees them")
    base_idx, _ = split_reference(120, 40, FAST.seed)
    wrong = (predicted[base_idx] + 1) % 10
    for labels, expected in ((predicted[base_idx], 1.0), (wrong, 0.0)):
        samples = ImageSet(reference_images[base_idx], labels, "conditional samples")
        result = evaluate(samples, reference, classifier=classifier, settings=FAST)
        match = next(m for m in result.metrics if m.key == "class_match")
        assert (match.value, match.baseline) == (expected, 1.0)
