"""FID: zero for a set with itself, and the closed form between Gaussians (from stats and from samples)."""

import numpy as np
import pytest
import torch

from diffsat.evaluation import feature_stats, fid_from_features, frechet_distance


def _random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root by eigendecomposition (independent of scipy.linalg.sqrtm)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _closed_form(m1, s1, m2, s2) -> float:
    """||m1-m2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)."""
    r1 = _psd_sqrt(s1)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * _psd_sqrt(r1 @ s2 @ r1)))


def test_fid_of_a_set_with_itself_is_zero() -> None:
    f = torch.randn(500, 32, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert abs(fid_from_features(f, f)) < 1e-6


def test_feature_stats_match_numpy() -> None:
    f = np.random.default_rng(1).standard_normal((300, 5))
    mu, sigma = feature_stats(torch.from_numpy(f).float())
    assert mu.shape == (5,) and sigma.shape == (5, 5) and mu.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float32).astype(np.float64), rowvar=False), atol=1e-6)


def test_commuting_covariances_match_the_diagonal_closed_form() -> None:
    rng = np.random.default_rng(2)
    d = 12
    q = _random_rotation(d, rng)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T  # share eigenvectors, so they commute
    expected = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum() + ((m1 - m2) ** 2).sum())
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-9)


def test_general_covariances_match_the_closed_form() -> None:
    rng = np.random.default_rng(3)
    d = 10
    a1, a2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = a1 @ a1.T / d + 0.1 * np.eye(d), a2 @ a2.T / d + 0.1 * np.eye(d)
    m1, m2 = rng.standard_normal(d), rng.standard_normal(d)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(_closed_form(m1, s1, m2, s2), rel=1e-7)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-8)


def test_fid_from_large_samples_approaches_the_closed_form() -> None:
    rng = np.random.default_rng(4)
    d, n = 6, 40_000
    s1, s2 = np.diag(rng.uniform(0.5, 2.0, d)), np.diag(rng.uniform(0.5, 2.0, d))
    m1, m2 = np.zeros(d), np.full(d, 0.5)
    x1 = rng.multivariate_normal(m1, s1, size=n)
    x2 = rng.multivariate_normal(m2, s2, size=n)
    expected = _closed_form(m1, s1, m2, s2)
    assert expected > 1.0
    assert fid_from_features(x1, x2) == pytest.approx(expected, rel=0.03)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError):
        feature_stats(np.zeros((1, 3)))


def test_rank_deficient_covariances_match_the_closed_form() -> None:
    rng = np.random.default_rng(7)
    f, g = rng.standard_normal((6, 20)), rng.standard_normal((8, 20)) + 0.3  # N < D: singular covariances
    (m1, s1), (m2, s2) = feature_stats(f), feature_stats(g)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(_closed_form(m1, s1, m2, s2), rel=1e-5)


def test_non_finite_square_root_falls_back_to_an_eps_offset(monkeypatch) -> None:
    import diffsat.evaluation.fid as fid

    real_sqrtm, calls = fid.linalg.sqrtm, []

    def flaky_sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid.linalg, "sqrtm", flaky_sqrtm)
    s = np.diag([1.0, 2.0, 0.0])
    with pytest.warns(UserWarning, match="singular"):
        value = frechet_distance(np.zeros(3), s, np.ones(3), s, eps=1e-6)
    assert len(calls) == 2 and np.allclose(calls[1], (s + 1e-6 * np.eye(3)) @ (s + 1e-6 * np.eye(3)))
    assert value == pytest.approx(3.0, abs=1e-5)
