"""The constrained lasso against a problem solved another way (projected gradient on the L1 ball)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lavise.relevance.lasso import BLOCK_ROWS, constrained_lasso, design_moments, lasso_path_points


def project_l1_ball(v: np.ndarray, radius: float) -> np.ndarray:
    """Euclidean projection onto {w : ||w||_1 <= radius} (Duchi et al. 2008)."""
    if np.abs(v).sum() <= radius:
        return v
    u = np.sort(np.abs(v))[::-1]
    cumulative = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(u) + 1) > cumulative - radius)[0][-1]
    theta = (cumulative[rho] - radius) / (rho + 1)
    return np.sign(v) * np.maximum(np.abs(v) - theta, 0.0)


def projected_gradient(x: np.ndarray, y: np.ndarray, radius: float, steps: int = 3000) -> np.ndarray:
    """min ||x w - y||² s.t. ||w||_1 <= radius, by accelerated projected gradient (FISTA), step 1/L."""
    gram, xy = x.T @ x, x.T @ y
    lipschitz = 2 * np.linalg.eigvalsh(gram).max()
    w = z = np.zeros(x.shape[1])
    t = 1.0
    for _ in range(steps):
        w_next = project_l1_ball(z - 2 * (gram @ z - xy) / lipschitz, radius)
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        z = w_next + (t - 1) / t_next * (w_next - w)
        w, t = w_next, t_next
    return w


@pytest.fixture(scope="module")
def problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((40, 5))  # non-negative, like post-ReLU pooled responses
    y = (x[:, 1] + 0.5 * x[:, 3] + 0.2 * rng.standard_normal(40) > 0.9).astype(np.float64)
    return x, y


@pytest.mark.parametrize("mu", [0.05, 0.2, 0.5])
def test_constrained_point_equals_projected_gradient(problem: tuple, mu: float) -> None:
    x, y = problem
    moments = design_moments(x, y[:, None], "raw")
    (w,) = lasso_path_points(moments.gram, moments.xy[:, 0], len(x), [mu])
    expected = projected_gradient(x, y, mu)
    np.testing.assert_allclose(w, expected, atol=1e-6)
    assert np.abs(w).sum() == pytest.approx(mu, rel=1e-9)  # the constraint is active


def test_point_on_the_right_support_by_brute_force(problem: tuple) -> None:
    """Against brute force over sign patterns: the best w with ||w||_1 = µ on every support."""
    x, y = problem
    mu = 0.3
    moments = design_moments(x, y[:, None], "raw")
    (w,) = lasso_path_points(moments.gram, moments.xy[:, 0], len(x), [mu])
    best = np.inf
    for signs in itertools.product((-1.0, 0.0, 1.0), repeat=x.shape[1]):
        s = np.array(signs)
        support = np.flatnonzero(s)
        if not len(support):
            continue
        # min ||x_S v - y||² s.t. s_S · v = mu (KKT: one linear system); keep it if the signs hold
        xs = x[:, support]
        kkt = np.block([[2 * xs.T @ xs, s[support, None]], [s[None, support], np.zeros((1, 1))]])
        v = np.linalg.solve(kkt, np.concatenate([2 * xs.T @ y, [mu]]))[:-1]
        if np.all(np.sign(v) == s[support]):
            best = min(best, float(((xs @ v - y) ** 2).sum()))
    assert float(((x @ w - y) ** 2).sum()) == pytest.approx(best, rel=1e-9)


def test_inactive_constraint_gives_least_squares(problem: tuple) -> None:
    x, y = problem
    moments = design_moments(x, y[:, None], "raw")
    (w,) = lasso_path_points(moments.gram, moments.xy[:, 0], len(x), [1e6])
    np.testing.assert_allclose(w, np.linalg.lstsq(x, y, rcond=None)[0], atol=1e-8)


def test_standardised_moments_match_a_naive_loop() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((BLOCK_ROWS + 7, 3)).astype(np.float32)  # more than one block
    x[:, 2] = 0.5  # a constant filter: never selectable
    labels = (rng.random((len(x), 2)) > 0.7).astype(np.float32)
    moments = design_moments(x, labels, "standardised")
    x64 = x[:, :2].astype(np.float64)
    z = (x64 - x64.mean(0)) / x64.std(0)
    labels64 = labels.astype(np.float64)
    centred = labels64 - labels64.mean(0)
    np.testing.assert_allclose(moments.gram[:2, :2], z.T @ z, rtol=1e-9)
    np.testing.assert_allclose(moments.xy[:2], z.T @ centred, rtol=1e-9, atol=1e-9)
    assert not moments.gram[2].any() and not moments.xy[2].any()


def test_weights_grow_with_mu_and_skip_empty_classes(problem: tuple) -> None:
    x, y = problem
    labels = np.stack([y, np.zeros_like(y)], axis=1)  # class 1: no positive image
    weights = constrained_lasso(design_moments(x, labels, "raw"), [0.05, 0.2, 0.5])
    assert weights.shape == (3, 2, 5)
    assert not weights[:, 1].any()
    supports = (weights[:, 0] != 0).sum(axis=1)
    assert supports[0] <= supports[1] <= supports[2]
    np.testing.assert_allclose(np.abs(weights[:, 0]).sum(axis=1), [0.05, 0.2, 0.5], rtol=1e-9)


@pytest.mark.parametrize("mus", [[0.0], [-1.0, 0.5]])
def test_non_positive_mu_is_refused(problem: tuple, mus: list) -> None:
    x, y = problem
    moments = design_moments(x, y[:, None], "raw")
    with pytest.raises(ValueError, match="µ must be > 0"):
        lasso_path_points(moments.gram, moments.xy[:, 0], len(x), mus)


def test_unknown_scaling_is_refused(problem: tuple) -> None:
    x, y = problem
    with pytest.raises(ValueError, match="scaling must be one of"):
        design_moments(x, y[:, None], "zscore")
