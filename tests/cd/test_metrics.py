import numpy as np
import pytest

from diffsat.cd.cva import change_magnitude, cva, otsu_threshold
from diffsat.cd.metrics import Accumulator, confusion, kappa, scores


def test_confusion_matrix_and_scores_match_hand_computation() -> None:
    truth = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    pred = np.array([[1, 0, 1, 0], [1, 0, 0, 0]])
    cm = confusion(pred, truth)
    assert cm.tolist() == [[4, 1], [1, 2]]  # TN 4, FP 1, FN 1, TP 2
    s = scores(cm)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3) and s["iou"] == pytest.approx(2 / 4)
    assert s["oa"] == pytest.approx(6 / 8)
    # p_o = 6/8; p_e = (3*3 + 5*5) / 64 = 34/64; kappa = (48/64 - 34/64) / (30/64) = 14/30
    assert s["kappa"] == pytest.approx(14 / 30)
    # no-change class: precision 4/5, recall 4/5, F1 0.8, IoU 4/6
    assert s["mean_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert s["mean_iou"] == pytest.approx((0.5 + 4 / 6) / 2)


def test_accumulator_sums_one_matrix_over_images_and_keeps_per_image_f1() -> None:
    acc = Accumulator()
    acc.add("a.png", np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))  # TP 1, FP 1, TN 2 -> F1 2/3
    acc.add("b.png", np.array([0, 0, 0, 0]), np.array([1, 1, 0, 0]))  # FN 2, TN 2 -> F1 0
    r = acc.result()
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (1, 1, 2, 4)
    assert r["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))  # from the summed matrix, not a mean
    assert r["per_image_f1"] == pytest.approx({"a.png": 2 / 3, "b.png": 0.0})
    assert r["pairs"] == 2


def test_degenerate_matrices() -> None:
    nothing = scores(np.array([[10, 0], [0, 0]]))  # no change anywhere, none predicted
    assert nothing["f1"] == 0.0 and nothing["oa"] == 1.0 and nothing["kappa"] == 1.0
    assert kappa(np.array([[5, 5], [5, 5]])) == pytest.approx(0.0)  # chance agreement


def test_otsu_equals_a_brute_force_search_of_the_histogram() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(20, 5, 3000), rng.normal(90, 10, 1000)])
    t = otsu_threshold(values)
    counts, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    def between(k: int) -> float:  # class 0 = bins < k
        w0, w1 = counts[:k].sum(), counts[k:].sum()
        m0, m1 = (counts[:k] * centres[:k]).sum() / w0, (counts[k:] * centres[k:]).sum() / w1
        return w0 * w1 * (m0 - m1) ** 2

    best = max(between(k) for k in range(1, 256))
    k = int(np.argmin(np.abs(edges - t)))
    assert edges[k] == pytest.approx(t) and between(k) == pytest.approx(best, rel=1e-12)  # ties: empty bins
    assert 35 < t < 70
    assert otsu_threshold(np.full(5, 3.0)) == 3.0


def test_cva_marks_the_changed_pixels() -> None:
    before = np.full((3, 8, 8), 100, dtype=np.uint8)
    after = before.copy()
    after[:, 2:4, 5:8] = 200
    assert change_magnitude(before, after)[2, 5] == pytest.approx(100 * np.sqrt(3))
    mask, magnitude = cva(before, after)
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:4, 5:8] = True
    assert (mask == expected).all() and magnitude.max() == 1.0
