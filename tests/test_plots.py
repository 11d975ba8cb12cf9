"""Loss-curve smoothing (diffsat.plots): the geometric running average follows a decaying loss."""

from __future__ import annotations

import numpy as np
import pytest

from diffsat.plots import smooth, smooth_log


def lag_rows(i: np.ndarray, w: float) -> np.ndarray:
    """Rows by which the debiased EMA of weight ``w`` of a linear series lags at row ``i`` (closed form):
    sum_m m (1 - w) w^m / (1 - w^(i+1)) over m = 0..i = w (1 - (i+1) w^i + i w^(i+1)) / ((1 - w)(1 - w^(i+1)))."""
    return w * (1 - (i + 1) * w**i + i * w ** (i + 1)) / ((1 - w) * (1 - w ** (i + 1)))


def test_geometric_average_of_an_exponential_decay_lags_by_the_closed_form() -> None:
    k, every, w = 2e-3, 50, 0.9  # loss = exp(-k * step), logged every 50 steps
    step = every * np.arange(1, 61)
    loss = np.exp(-k * step)
    i = np.arange(len(step))
    expected_ratio = np.exp(k * every * lag_rows(i, w))  # smoothed / raw = exp(k * lag in steps)
    np.testing.assert_allclose(smooth_log(loss, w) / loss, expected_ratio, rtol=1e-10)
    # the lag tends to w / (1 - w) = 9 rows = 450 steps: the curve settles exp(0.9) = 2.46x above the loss
    assert smooth_log(loss, w)[-1] / loss[-1] == pytest.approx(np.exp(k * every * w / (1 - w)), rel=0.02)


def test_arithmetic_average_of_a_fast_early_drop_sits_far_above_the_geometric_one() -> None:
    """A loss falling 30x in the first rows, then flat: the arithmetic average stays high for many rows
    (the report's complaint); the geometric one is back within 5 % of the flat loss after 30 rows."""
    loss = np.concatenate([np.geomspace(0.6, 0.02, 5), np.full(45, 0.02)])
    assert smooth(loss)[30] > 1.04 * 0.02
    assert smooth_log(loss)[30] < smooth(loss)[30]
    assert smooth_log(loss)[30] == pytest.approx(0.02, rel=0.05)
    np.testing.assert_allclose(smooth_log(np.full(7, 0.3)), 0.3)  # a constant stays itself
