"""The second-order view of PESO in METHOD.md, checked numerically.

(1) With a quadratic CE 1/2 (v - v*)^T H (v - v*) and the penalty lambda/2 (v - v_prev)^T M (v - v_prev),
M = diag(p) - p p^T, p = softmax(v_prev), the minimiser moves a fraction rho / (rho + lambda) toward v*
along each generalised eigen-direction (H q = rho M q). M is singular (M 1 = 0): the pencil is solved as
M q = mu H q (H is positive definite), mu = 1/rho. mu = 0 is the all-ones direction, where the penalty is
blind (rho = infinity: it moves all the way to v*); the other directions are H-orthogonal to it.
(2) softmax_kl(v_prev + delta, log p) ~ 1/2 Var_p(delta), the error shrinking with delta.
"""

import numpy as np
import pytest
import torch

from peso.strategies.peso import softmax_kl

N, LAM = 6, 2.0


def _problem(seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    v_prev = 1.5 * rng.normal(size=N)  # far from uniform: p weighs entries very differently
    v_star = v_prev + scale * rng.normal(size=N)
    g = rng.normal(size=(N, N))
    h = g @ g.T + 0.2 * np.eye(N)
    p = np.exp(v_prev - v_prev.max())
    p /= p.sum()
    m = np.diag(p) - np.outer(p, p)
    return v_prev, v_star, h, p, m


def _generalised_eig(h: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu, Q with M Q = H Q diag(mu), Q^T H Q = I (Cholesky of H reduces it to a symmetric eigenproblem)."""
    chol = np.linalg.cholesky(h)
    inv = np.linalg.inv(chol)
    mu, y = np.linalg.eigh(inv @ m @ inv.T)
    return mu, inv.T @ y


def _descend(v_prev, v_star, h, m, lam: float) -> np.ndarray:
    """Plain gradient descent on the quadratic objective (no closed form involved)."""
    step = 1.0 / np.linalg.eigvalsh(h + lam * m).max()
    v = v_prev.copy()
    for _ in range(50_000):
        grad = h @ (v - v_star) + lam * m @ (v - v_prev)
        v -= step * grad
        if np.linalg.norm(grad) < 1e-12:
            break
    assert np.linalg.norm(grad) < 1e-10
    return v


def test_minimiser_moves_rho_over_rho_plus_lambda_along_each_generalised_eigendirection():
    v_prev, v_star, h, _, m = _problem()
    v_hat = _descend(v_prev, v_star, h, m, LAM)
    mu, q = _generalised_eig(h, m)
    np.testing.assert_allclose(q.T @ h @ q, np.eye(N), atol=1e-9)

    # the one mu = 0 direction is the all-ones one (the softmax's blind constant shift)
    ones = np.ones(N) / np.sqrt(N)
    assert abs(mu[0]) < 1e-12 and mu[1] > 1e-6
    assert abs(q[:, 0] @ ones) / np.linalg.norm(q[:, 0]) == pytest.approx(1.0, abs=1e-9)
    rho = 1.0 / mu[1:]
    for i in range(1, N):  # the others: H q = rho M q, H-orthogonal to the ones direction
        np.testing.assert_allclose(h @ q[:, i], rho[i - 1] * m @ q[:, i], rtol=1e-7, atol=1e-9)
        assert abs(q[:, i] @ h @ ones) < 1e-9

    # coordinates in that basis (Q^T H is its dual): how far toward v* the minimiser went, per direction
    c_star = q.T @ h @ (v_star - v_prev)
    c_hat = q.T @ h @ (v_hat - v_prev)
    fraction = c_hat / c_star
    expected = np.concatenate([[1.0], rho / (rho + LAM)])
    np.testing.assert_allclose(fraction, expected, rtol=1e-6)
    # data-aware and direction-wise: far from one uniform interpolation of v_prev and v*
    assert expected.max() - expected.min() > 0.3


def test_lambda_zero_and_large_lambda_limits():
    v_prev, v_star, h, _, m = _problem(seed=1)
    np.testing.assert_allclose(_descend(v_prev, v_star, h, m, 0.0), v_star, atol=1e-8)
    # a huge lambda keeps v_prev up to a constant shift (the only free direction)
    far = _descend(v_prev, v_star, h, m, 1e4)
    shift = far - v_prev
    assert np.ptp(shift) < 1e-2 * np.ptp(v_star - v_prev)


def _minimise_with_softmax_kl(
    v_prev: np.ndarray, v_star: np.ndarray, h: np.ndarray, lam: float
) -> np.ndarray:
    """argmin of 1/2 (v - v*)^T H (v - v*) + lam * softmax_kl(v, log softmax(v_prev)), by L-BFGS."""
    prev_t, star_t, h_t = (torch.tensor(x) for x in (v_prev, v_star, h))
    anchor = torch.log_softmax(prev_t, 0)
    v = prev_t.clone().requires_grad_(True)
    # tolerance_change 0: the losses are ~1e-4, the default would stop short of the minimum
    opt = torch.optim.LBFGS(
        [v], max_iter=500, tolerance_grad=1e-15, tolerance_change=0.0, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        d = v - star_t
        loss = 0.5 * d @ h_t @ d + lam * softmax_kl(v, anchor)
        loss.backward()
        return loss

    opt.step(closure)
    return v.detach().numpy()


def test_softmax_kl_penalty_has_the_same_minimiser_for_small_steps():
    # the real term (softmax_kl), not its quadratic model: the minimisers agree to first order in |v* - v_prev|
    errors = []
    for scale in (1e-1, 1e-2):
        v_prev, v_star, h, _, m = _problem(seed=2, scale=scale)
        quad = _descend(v_prev, v_star, h, m, LAM)
        exact = _minimise_with_softmax_kl(v_prev, v_star, h, LAM)
        errors.append(np.linalg.norm(exact - quad) / np.linalg.norm(quad - v_prev))
    assert errors[1] < 2e-3 and errors[1] < 0.2 * errors[0]  # first order: shrinking linearly


@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_kl_is_half_the_p_weighted_variance_for_small_delta(seed):
    gen = torch.Generator().manual_seed(seed)
    prev = 2.0 * torch.randn(200, generator=gen, dtype=torch.float64)
    direction = torch.randn(200, generator=gen, dtype=torch.float64)
    anchor = torch.log_softmax(prev, 0)
    p = anchor.exp()
    errors = []
    for eps in (1e-2, 1e-3, 1e-4):  # (at 1e-1 the third- and fourth-order terms can still cancel)
        delta = eps * direction
        half_var = 0.5 * float((p * delta**2).sum() - (p * delta).sum() ** 2)
        kl = softmax_kl(prev + delta, anchor).item()
        errors.append(abs(kl - half_var) / half_var)
        # blind to a constant shift, as the variance is
        assert softmax_kl(prev + delta + 3.0, anchor).item() == pytest.approx(kl, rel=1e-9)
    assert errors[-1] < 1e-3
    assert errors[1] < 0.2 * errors[0] and errors[2] < 0.2 * errors[1]  # shrinking (about linearly)
