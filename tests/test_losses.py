"""
Unit tests of the pure MPO maths in ``sb3_mpo.mpo.losses`` against independent computations: numpy loops, closed
forms, scipy solvers and ``torch.distributions``. Nothing here copies a number out of the implementation.
"""

import math

import numpy as np
import pytest
import torch as th
from scipy import integrate, optimize, stats
from torch.distributions import Categorical, Normal, kl_divergence

from sb3_mpo.mpo import losses

import brute_force

DTYPE = th.float64


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _t(array) -> th.Tensor:
    return th.as_tensor(np.asarray(array), dtype=DTYPE)


def _np_temperature_dual(q_values: np.ndarray, temperature: float, epsilon: float) -> float:
    """g(eta) = eta*eps + eta * mean_s log(1/N sum_j exp(Q_sj / eta)), by loops with a max-shift."""
    n_samples, batch_size = q_values.shape
    total = 0.0
    for s in range(batch_size):
        scaled = q_values[:, s] / temperature
        shift = scaled.max()
        total += shift + math.log(sum(math.exp(x - shift) for x in scaled) / n_samples)
    return temperature * epsilon + temperature * total / batch_size


def _np_categorical_dual(q_values: np.ndarray, probs_old: np.ndarray, temperature: float, epsilon: float) -> float:
    """g(eta) = eta*eps + eta * mean_s log sum_a pi_old(a|s) exp(Q(s,a)/eta), by loops with a max-shift."""
    batch_size, n_actions = q_values.shape
    total = 0.0
    for s in range(batch_size):
        scaled = q_values[s] / temperature
        shift = scaled.max()
        total += shift + math.log(sum(probs_old[s, a] * math.exp(scaled[a] - shift) for a in range(n_actions)))
    return temperature * epsilon + temperature * total / batch_size


def _random_probs(rng: np.random.Generator, batch_size: int, n_actions: int) -> np.ndarray:
    probs = rng.dirichlet(np.ones(n_actions), size=batch_size)
    return probs


# ----------------------------------------------------------------------------------------------------------------------
# positive / inverse_positive
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e-6 + 1e-8, 1e-3, 0.1, 1.0, 10.0, 1000.0])
def test_inverse_positive_round_trip(value):
    """positive(inverse_positive(v)) == v, and the raw value solves log(1 + exp(raw)) + floor = v (numpy closed form)."""
    raw = losses.inverse_positive(value)
    assert math.isfinite(raw)
    np.testing.assert_allclose(np.logaddexp(0.0, raw) + 1e-8, value, rtol=1e-9)
    recovered = losses.positive(th.tensor(raw, dtype=DTYPE)).item()
    np.testing.assert_allclose(recovered, value, rtol=1e-9)


@pytest.mark.parametrize("floor", [1e-8, 1e-4, 0.5])
def test_positive_matches_numpy_softplus(floor):
    """positive(x) equals the numpy softplus log(1 + exp(x)) plus the floor on a grid of raw values."""
    raw = np.linspace(-30.0, 30.0, 61)
    expected = np.logaddexp(0.0, raw) + floor
    # torch returns x itself above its softplus threshold (20): a relative error below exp(-20)/20
    np.testing.assert_allclose(losses.positive(_t(raw), floor=floor).numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
def test_positive_is_strictly_positive_for_very_negative_raw(dtype):
    """positive(raw) > 0 (at least the floor) even for raw = -100 and -1e4, where softplus underflows."""
    raw = th.tensor([-1e4, -100.0, -50.0], dtype=dtype)
    values = losses.positive(raw)
    assert th.all(values > 0)
    assert th.all(values >= th.tensor(1e-8, dtype=dtype))


@pytest.mark.parametrize("value", [1e-8, 1e-9, 0.0, -1.0])
def test_inverse_positive_rejects_values_at_or_below_floor(value):
    """inverse_positive raises ValueError when the requested value is not above the floor."""
    with pytest.raises(ValueError):
        losses.inverse_positive(value)


def test_inverse_positive_respects_custom_floor():
    """With a custom floor, the floor itself is rejected and values above it round-trip (numpy softplus)."""
    with pytest.raises(ValueError):
        losses.inverse_positive(0.5, floor=0.5)
    raw = losses.inverse_positive(2.0, floor=0.5)
    np.testing.assert_allclose(np.logaddexp(0.0, raw) + 0.5, 2.0, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# E-step over samples: e_step_weights, temperature_dual, sample_kl_to_old
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.7, 3.0, 50.0])
def test_e_step_weights_match_brute_force_softmax(temperature):
    """Weights sum to one per state (columns) and equal a numpy loop softmax of Q/eta over the N samples."""
    q_values = _rng(1).normal(scale=2.0, size=(12, 5))
    weights = losses.e_step_weights(_t(q_values), th.tensor(temperature, dtype=DTYPE))
    assert weights.shape == (12, 5)
    np.testing.assert_allclose(weights.sum(dim=0).numpy(), np.ones(5), atol=1e-12)
    np.testing.assert_allclose(weights.numpy(), brute_force.softmax_columns(q_values, temperature), rtol=1e-10, atol=1e-14)


def test_e_step_weights_do_not_propagate_gradient():
    """The weights are E-step constants: no graph to Q or to eta (checked via requires_grad)."""
    q_values = _t(_rng(2).normal(size=(6, 3))).requires_grad_(True)
    temperature = th.tensor(1.3, dtype=DTYPE, requires_grad=True)
    weights = losses.e_step_weights(q_values, temperature)
    assert not weights.requires_grad


def test_e_step_weights_and_dual_gradient_invariant_to_per_state_baseline():
    """Adding a per-state baseline c_s to Q leaves the weights and d g / d eta unchanged (shift-invariance)."""
    rng = _rng(3)
    q_values = rng.normal(size=(10, 7))
    baseline = rng.normal(scale=100.0, size=(1, 7))
    epsilon = 0.1

    def weights_and_grad(q):
        temperature = th.tensor(0.8, dtype=DTYPE, requires_grad=True)
        weights = losses.e_step_weights(_t(q), temperature)
        (grad,) = th.autograd.grad(losses.temperature_dual(_t(q), temperature, epsilon), temperature)
        return weights.numpy(), grad.item()

    weights, grad = weights_and_grad(q_values)
    weights_shifted, grad_shifted = weights_and_grad(q_values + baseline)
    np.testing.assert_allclose(weights_shifted, weights, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(grad_shifted, grad, rtol=1e-8, atol=1e-10)
    # and the dual itself moves by exactly mean_s c_s
    g = losses.temperature_dual(_t(q_values), th.tensor(0.8, dtype=DTYPE), epsilon).item()
    g_shifted = losses.temperature_dual(_t(q_values + baseline), th.tensor(0.8, dtype=DTYPE), epsilon).item()
    np.testing.assert_allclose(g_shifted - g, baseline.mean(), rtol=1e-9)


@pytest.mark.parametrize("temperature", [0.01, 0.3, 1.0, 7.0, 200.0])
@pytest.mark.parametrize("epsilon", [0.01, 0.1, 1.0])
def test_temperature_dual_matches_numpy_loop(temperature, epsilon):
    """temperature_dual equals g(eta) = eta*eps + eta*mean_s log(1/N sum_j exp(Q_sj/eta)) computed by numpy loops."""
    q_values = _rng(4).normal(scale=3.0, size=(20, 6))
    value = losses.temperature_dual(_t(q_values), th.tensor(temperature, dtype=DTYPE), epsilon).item()
    np.testing.assert_allclose(value, _np_temperature_dual(q_values, temperature, epsilon), rtol=1e-10)


def test_temperature_dual_gradient_matches_closed_form():
    """d g / d eta equals the closed form eps - mean_s KL(q_s || uniform) (first-order condition of the dual)."""
    rng = _rng(5)
    q_values = rng.normal(scale=2.0, size=(16, 9))
    epsilon, eta = 0.1, 0.6
    temperature = th.tensor(eta, dtype=DTYPE, requires_grad=True)
    (grad,) = th.autograd.grad(losses.temperature_dual(_t(q_values), temperature, epsilon), temperature)
    np.testing.assert_allclose(grad.item(), epsilon - brute_force.tilted_kl(q_values, eta), rtol=1e-9)


def _sampled_dual(eta: float) -> float:
    q_values = _rng(6).normal(scale=2.0, size=(20, 8))
    return losses.temperature_dual(_t(q_values), th.tensor(eta, dtype=DTYPE), 0.1).item()


def _categorical_dual(eta: float) -> float:
    rng = _rng(13)
    q_values, probs_old = rng.normal(size=(6, 4)), _random_probs(rng, 6, 4)
    return losses.categorical_temperature_dual(_t(q_values), _t(np.log(probs_old)), th.tensor(eta, dtype=DTYPE), 0.1).item()


@pytest.mark.parametrize("dual", [_sampled_dual, _categorical_dual], ids=["sampled", "categorical"])
def test_temperature_dual_is_convex_in_eta(dual):
    """Second differences of g on a geometric grid of eta are non-negative (g is convex), with an interior minimum."""
    etas = np.geomspace(1e-2, 1e2, 200)
    g = np.array([dual(eta) for eta in etas])
    # non-uniform grid: convexity means the slopes between consecutive points are non-decreasing
    slopes = np.diff(g) / np.diff(etas)
    assert np.all(np.diff(slopes) >= -1e-9)
    # and the dual is not trivially linear: it has an interior minimum on this grid
    assert 0 < int(np.argmin(g)) < len(etas) - 1


def test_sample_kl_to_old_matches_numpy_loop_on_random_weights():
    """Mean over states of sum_j q_j log(N q_j) for random simplex columns, by a numpy loop."""
    rng = _rng(9)
    weights = rng.dirichlet(np.ones(7), size=5).T  # (N=7, B=5)
    uniform = np.full(7, 1.0 / 7)
    expected = np.mean([brute_force.kl(weights[:, s], uniform) for s in range(5)])
    np.testing.assert_allclose(losses.sample_kl_to_old(_t(weights)).item(), expected, rtol=1e-9)


# ----------------------------------------------------------------------------------------------------------------------
# Categorical E-step and KL
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 1.0, 10.0])
def test_categorical_e_step_weights_match_brute_force(temperature):
    """Weights equal pi_old(a|s) exp(Q(s,a)/eta) normalised per state, computed by numpy loops."""
    rng = _rng(10)
    batch_size, n_actions = 6, 4
    q_values = rng.normal(scale=2.0, size=(batch_size, n_actions))
    probs_old = _random_probs(rng, batch_size, n_actions)
    weights = losses.categorical_e_step_weights(_t(q_values), _t(np.log(probs_old)), th.tensor(temperature, dtype=DTYPE))

    expected = brute_force.softmax_columns(q_values.T, temperature, probs_old.T).T
    assert weights.shape == (batch_size, n_actions)
    np.testing.assert_allclose(weights.sum(dim=-1).numpy(), np.ones(batch_size), atol=1e-12)
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-10, atol=1e-14)
    assert not weights.requires_grad


def test_greedy_e_step_kl_is_the_limit_of_the_e_step_as_the_temperature_falls():
    """-log π_old(a*|s) against KL(q_η || π_old) of the exact E-step at η = 1e-4 (Q-values spaced by at least 0.05), and
    against a numpy loop over the states."""
    rng = _rng(12)
    batch_size, n_actions = 6, 4
    q_values = np.stack([rng.permutation(n_actions) * 0.05 for _ in range(batch_size)])  # one best action per state
    probs_old = _random_probs(rng, batch_size, n_actions)
    greedy = losses.greedy_e_step_kl(_t(q_values), _t(np.log(probs_old)))
    expected = np.mean([-np.log(probs_old[s, np.argmax(q_values[s])]) for s in range(batch_size)])
    assert greedy.item() == pytest.approx(expected, rel=1e-12)
    weights = losses.categorical_e_step_weights(_t(q_values), _t(np.log(probs_old)), th.tensor(1e-4, dtype=DTYPE))
    limit = losses.categorical_kl(weights.log(), _t(np.log(probs_old))).mean()
    assert limit.item() == pytest.approx(expected, rel=1e-9)
    # at any finite temperature the E-step's KL lies below the limit
    weights = losses.categorical_e_step_weights(_t(q_values), _t(np.log(probs_old)), th.tensor(0.1, dtype=DTYPE))
    assert losses.categorical_kl(weights.log(), _t(np.log(probs_old))).mean().item() < expected


@pytest.mark.parametrize("temperature", [0.05, 1.0, 20.0])
def test_categorical_temperature_dual_matches_numpy_loop(temperature):
    """categorical_temperature_dual equals eta*eps + eta*mean_s log sum_a pi_old exp(Q/eta) by numpy loops."""
    rng = _rng(11)
    q_values = rng.normal(scale=2.0, size=(5, 6))
    probs_old = _random_probs(rng, 5, 6)
    value = losses.categorical_temperature_dual(
        _t(q_values), _t(np.log(probs_old)), th.tensor(temperature, dtype=DTYPE), 0.1
    ).item()
    np.testing.assert_allclose(value, _np_categorical_dual(q_values, probs_old, temperature, 0.1), rtol=1e-10)


@pytest.mark.parametrize("epsilon", [0.01, 0.1, 0.3])
def test_categorical_temperature_dual_minimiser_achieves_kl_bound(epsilon):
    """At the scipy minimiser of the categorical dual, mean_s KL(q || pi_old) (brute force) equals eps."""
    rng = _rng(12)
    batch_size, n_actions = 8, 5
    q_values = rng.normal(scale=2.0, size=(batch_size, n_actions))
    probs_old = _random_probs(rng, batch_size, n_actions)
    q_tensor, log_probs_old = _t(q_values), _t(np.log(probs_old))

    def dual(eta: float) -> float:
        return losses.categorical_temperature_dual(q_tensor, log_probs_old, th.tensor(eta, dtype=DTYPE), epsilon).item()

    result = optimize.minimize_scalar(dual, bounds=(1e-3, 1e3), method="bounded", options={"xatol": 1e-12})
    assert result.success and 1e-3 < result.x < 1e3
    eta_star = result.x

    np.testing.assert_allclose(brute_force.tilted_kl(q_values.T, eta_star, probs_old.T), epsilon, rtol=1e-4, atol=1e-6)
    # the implementation's weights at eta* give the same KL through categorical_kl(q || pi_old)
    weights = losses.categorical_e_step_weights(q_tensor, log_probs_old, th.tensor(eta_star, dtype=DTYPE))
    np.testing.assert_allclose(losses.categorical_kl(weights.log(), log_probs_old).mean().item(), epsilon, rtol=1e-4)


@pytest.mark.parametrize("with_prior", [False, True])
def test_tilted_kl_matches_brute_force_and_batches_candidates(with_prior):
    """tilted_kl equals the looped KL(q_eta || p), for uniform samples and for a prior with a zero-probability action."""
    rng = _rng(21)
    q_values = rng.normal(scale=3.0, size=(6, 10))
    probs = np.full_like(q_values, 1.0 / 6)
    if with_prior:
        probs = _random_probs(rng, 10, 6).T.copy()
        probs[2, 3] = 0.0
        probs[:, 3] /= probs[:, 3].sum()
    with np.errstate(divide="ignore"):
        log_prior = _t(np.log(probs)) if with_prior else None
    etas = [0.05, 0.7, 4.0, 90.0]
    for eta in etas:
        value = losses.tilted_kl(_t(q_values), th.tensor(eta, dtype=DTYPE), log_prior).item()
        np.testing.assert_allclose(value, brute_force.tilted_kl(q_values, eta, probs), rtol=1e-9, atol=1e-12)
    batched = losses.tilted_kl(_t(q_values), _t(etas), log_prior)
    np.testing.assert_allclose(
        batched.numpy(), [brute_force.tilted_kl(q_values, eta, probs) for eta in etas], rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize("epsilon", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("with_prior", [False, True])
def test_solve_temperature_matches_scipy_minimiser_of_the_dual(epsilon, with_prior):
    """The solved eta is scipy's minimiser of the dual g (numpy loops), and it satisfies the bound KL <= eps."""
    rng = _rng(8)
    n_actions, batch_size = 7, 12
    q_values = rng.normal(scale=2.0, size=(n_actions, batch_size))
    probs = _random_probs(rng, batch_size, n_actions).T.copy() if with_prior else np.full_like(q_values, 1 / n_actions)

    def dual(eta: float) -> float:
        if with_prior:
            return _np_categorical_dual(q_values.T, probs.T, eta, epsilon)
        return _np_temperature_dual(q_values, eta, epsilon)

    result = optimize.minimize_scalar(dual, bounds=(1e-4, 1e4), method="bounded", options={"xatol": 1e-12})
    log_prior = _t(np.log(probs)) if with_prior else None
    eta = losses.solve_temperature(_t(q_values), epsilon, log_prior).item()
    np.testing.assert_allclose(eta, result.x, rtol=1e-5)
    assert brute_force.tilted_kl(q_values, eta, probs) <= epsilon * (1 + 1e-9)


@pytest.mark.parametrize("shape", ["outlier", "student_t", "bimodal", "ties"])
@pytest.mark.parametrize("warm_start", [None, 0.01, 1e3, float("nan"), float("inf"), 0.0])
def test_solve_temperature_converges_on_awkward_batches(shape, warm_start):
    """
    On heavy-tailed, bimodal or tied Q-values, cold or badly warm-started (a NaN, infinite or zero guess included), eta
    is scipy's root of KL(eta) = eps.
    """
    rng = _rng(11)
    q_values = {
        "outlier": np.where(rng.random((20, 16)) < 0.05, 30.0, 0.0) + rng.normal(scale=0.1, size=(20, 16)),
        "student_t": rng.standard_t(df=1.5, size=(20, 16)),
        "bimodal": rng.choice([-5.0, 5.0], size=(20, 16)) + rng.normal(scale=0.3, size=(20, 16)),
        "ties": rng.integers(0, 3, size=(20, 16)).astype(float),
    }[shape]
    uniform = np.full_like(q_values, 1 / 20)
    root = optimize.brentq(lambda eta: brute_force.tilted_kl(q_values, eta, uniform) - 0.1, 1e-3, 1e4, xtol=1e-14)
    initial = None if warm_start is None else th.tensor(warm_start, dtype=DTYPE)
    eta = losses.solve_temperature(_t(q_values), 0.1, initial=initial).item()
    np.testing.assert_allclose(eta, root, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e4, 1e6])
def test_solve_temperature_follows_the_reward_scale_in_float32(scale):
    """Scaling Q by c scales the solved eta by c (float32, Q offset by 1e3 * c), and the weights keep KL = eps."""
    rng = _rng(3)
    q_values = rng.normal(size=(20, 64)) + 1e3
    uniform = np.full_like(q_values, 1 / 20)
    reference = optimize.brentq(lambda eta: brute_force.tilted_kl(q_values, eta, uniform) - 0.1, 1e-3, 1e4, xtol=1e-14)
    q_scaled = th.as_tensor(q_values * scale, dtype=th.float32)
    eta = losses.solve_temperature(q_scaled, 0.1)
    np.testing.assert_allclose(eta.item() / scale, reference, rtol=1e-4)
    np.testing.assert_allclose(brute_force.tilted_kl(q_values * scale, eta.item(), uniform), 0.1, rtol=1e-3)
    kl = losses.sample_kl_to_old(losses.e_step_weights(q_scaled, eta)).item()  # the weights computed in float32
    np.testing.assert_allclose(kl, 0.1, rtol=1e-3)


def test_solve_temperature_is_practically_greedy_when_the_bound_is_loose():
    """With eps above the greedy KL (log N for N distinct samples), eta is tiny and q puts its mass on the best sample."""
    q_values = _t(_rng(4).normal(size=(5, 3)))
    eta = losses.solve_temperature(q_values, epsilon=2.0)  # log 5 = 1.61 < 2
    weights = losses.e_step_weights(q_values, eta)
    np.testing.assert_allclose(weights.max(dim=0).values.numpy(), 1.0, atol=1e-6)
    assert th.equal(weights.argmax(dim=0), q_values.argmax(dim=0))


def test_solve_temperature_of_tied_values_is_finite_and_gives_uniform_weights():
    """All Q-values equal (e.g. the action penalty with every sample inside the bounds): finite eta, uniform weights."""
    q_values = th.zeros(8, 4, dtype=DTYPE)
    eta = losses.solve_temperature(q_values, 1e-3)
    assert th.isfinite(eta) and eta > 0
    np.testing.assert_allclose(losses.e_step_weights(q_values, eta).numpy(), 1 / 8)


def test_temperature_duals_keep_their_gradient_in_float32_for_large_q():
    """With |Q|/eta ~ 1e5, the float32 gradients of both duals equal the float64 closed form eps - mean KL."""
    rng = _rng(6)
    q_values = rng.normal(scale=1.0, size=(20, 32)) + 1e5
    probs = _random_probs(rng, 32, 20)
    epsilon, eta = 0.1, 1.0
    expected = epsilon - brute_force.tilted_kl(q_values, eta, np.full_like(q_values, 1 / 20))
    expected_categorical = epsilon - brute_force.tilted_kl(q_values, eta, probs.T)
    q32 = th.as_tensor(q_values, dtype=th.float32)
    temperature = th.tensor(eta, requires_grad=True)
    (grad,) = th.autograd.grad(losses.temperature_dual(q32, temperature, epsilon), temperature)
    np.testing.assert_allclose(grad.item(), expected, rtol=1e-3, atol=1e-4)
    log_probs = th.as_tensor(np.log(probs), dtype=th.float32)
    (grad,) = th.autograd.grad(losses.categorical_temperature_dual(q32.T, log_probs, temperature, epsilon), temperature)
    np.testing.assert_allclose(grad.item(), expected_categorical, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_categorical_kl_matches_torch_distributions(seed):
    """categorical_kl(log p_old, log p) equals torch.distributions.kl_divergence(Categorical(p_old), Categorical(p))."""
    generator = th.Generator().manual_seed(seed)
    logits_old = 3.0 * th.randn(7, 5, generator=generator, dtype=DTYPE)
    logits = 3.0 * th.randn(7, 5, generator=generator, dtype=DTYPE)
    log_probs_old, log_probs = th.log_softmax(logits_old, dim=-1), th.log_softmax(logits, dim=-1)
    kl = losses.categorical_kl(log_probs_old, log_probs)
    expected = kl_divergence(Categorical(logits=logits_old), Categorical(logits=logits))
    assert kl.shape == (7,)
    np.testing.assert_allclose(kl.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(losses.categorical_kl(log_probs_old, log_probs_old).numpy(), np.zeros(7), atol=1e-12)


def test_categorical_kl_with_zero_probability_old_action_matches_torch():
    """An action with pi_old(a|s) = 0 contributes nothing to KL(pi_old || pi), as in torch.distributions' Categorical."""
    log_probs_old = th.log(th.tensor([[0.5, 0.5, 0.0]], dtype=DTYPE))
    log_probs = th.log(th.tensor([[0.2, 0.3, 0.5]], dtype=DTYPE))
    expected = kl_divergence(Categorical(logits=log_probs_old), Categorical(logits=log_probs))
    np.testing.assert_allclose(losses.categorical_kl(log_probs_old, log_probs).numpy(), expected.numpy(), rtol=1e-10)


# ----------------------------------------------------------------------------------------------------------------------
# Decoupled Gaussian KL
# ----------------------------------------------------------------------------------------------------------------------


def _gaussian_stats(seed: int, batch_size: int = 6, action_dim: int = 3):
    generator = th.Generator().manual_seed(seed)
    mean_old = th.randn(batch_size, action_dim, generator=generator, dtype=DTYPE)
    mean = mean_old + 0.7 * th.randn(batch_size, action_dim, generator=generator, dtype=DTYPE)
    std_old = th.exp(0.5 * th.randn(batch_size, action_dim, generator=generator, dtype=DTYPE))
    std = std_old * th.exp(0.4 * th.randn(batch_size, action_dim, generator=generator, dtype=DTYPE))
    return mean_old, std_old, mean, std


@pytest.mark.parametrize("seed", [0, 1])
def test_gaussian_kl_mean_and_std_match_torch_per_dimension(seed):
    """C_mu = KL(N(mu_old, s_old) || N(mu, s_old)) and C_sigma = KL(N(mu_old, s_old) || N(mu_old, s)), per dimension."""
    mean_old, std_old, mean, std = _gaussian_stats(seed)
    kl_mean = losses.gaussian_kl_mean(mean_old, mean, std_old)
    kl_std = losses.gaussian_kl_std(std_old, std)
    expected_mean = kl_divergence(Normal(mean_old, std_old), Normal(mean, std_old))
    expected_std = kl_divergence(Normal(mean_old, std_old), Normal(mean_old, std))
    assert kl_mean.shape == kl_std.shape == mean.shape
    np.testing.assert_allclose(kl_mean.numpy(), expected_mean.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(kl_std.numpy(), expected_std.numpy(), rtol=1e-10, atol=1e-14)
    assert th.all(kl_mean >= 0) and th.all(kl_std >= 0)


def test_gaussian_kl_halves_sum_to_full_kl_when_one_part_is_unchanged():
    """C_mu + C_sigma equals torch's full KL(N(mu_old, s_old) || N(mu, s)) when s = s_old or mu = mu_old."""
    mean_old, std_old, mean, std = _gaussian_stats(3)
    # std unchanged
    total = losses.gaussian_kl_mean(mean_old, mean, std_old) + losses.gaussian_kl_std(std_old, std_old)
    full = kl_divergence(Normal(mean_old, std_old), Normal(mean, std_old))
    np.testing.assert_allclose(total.numpy(), full.numpy(), rtol=1e-10, atol=1e-14)
    # mean unchanged
    total = losses.gaussian_kl_mean(mean_old, mean_old, std_old) + losses.gaussian_kl_std(std_old, std)
    full = kl_divergence(Normal(mean_old, std_old), Normal(mean_old, std))
    np.testing.assert_allclose(total.numpy(), full.numpy(), rtol=1e-10, atol=1e-14)


def test_full_gaussian_kl_is_std_half_plus_mean_term_with_new_std():
    """Exact decomposition: full KL = C_sigma + 0.5((mu - mu_old)/s_new)^2, and differs from C_mu + C_sigma in general."""
    mean_old, std_old, mean, std = _gaussian_stats(4)
    full = kl_divergence(Normal(mean_old, std_old), Normal(mean, std))
    decomposed = losses.gaussian_kl_std(std_old, std) + 0.5 * ((mean - mean_old) / std) ** 2
    np.testing.assert_allclose(decomposed.numpy(), full.numpy(), rtol=1e-10, atol=1e-14)
    # with both parts moving, the decoupled (old-sigma) mean term is a different quantity
    decoupled = losses.gaussian_kl_mean(mean_old, mean, std_old) + losses.gaussian_kl_std(std_old, std)
    assert not np.allclose(decoupled.numpy(), full.numpy(), rtol=1e-3)


@pytest.mark.parametrize("batch_size,action_dim", [(1, 1), (6, 3), (4, 7)])
def test_decoupled_gaussian_kl_shapes_and_values(batch_size, action_dim):
    """per_dim=True gives shape (A,) = batch mean of torch's per-dimension KLs; per_dim=False gives (1,) = their sum."""
    mean_old, std_old, mean, std = _gaussian_stats(5, batch_size, action_dim)
    expected_mean = kl_divergence(Normal(mean_old, std_old), Normal(mean, std_old)).numpy().mean(axis=0)
    expected_std = kl_divergence(Normal(mean_old, std_old), Normal(mean_old, std)).numpy().mean(axis=0)

    per_dim = losses.decoupled_gaussian_kl(mean_old, std_old, mean, std, per_dim=True)
    assert isinstance(per_dim, losses.DecoupledKL)
    assert per_dim.mean.shape == per_dim.std.shape == (action_dim,)
    np.testing.assert_allclose(per_dim.mean.numpy(), expected_mean, rtol=1e-10)
    np.testing.assert_allclose(per_dim.std.numpy(), expected_std, rtol=1e-10)

    joint = losses.decoupled_gaussian_kl(mean_old, std_old, mean, std, per_dim=False)
    assert joint.mean.shape == joint.std.shape == (1,)
    np.testing.assert_allclose(joint.mean.numpy(), [expected_mean.sum()], rtol=1e-10)
    np.testing.assert_allclose(joint.std.numpy(), [expected_std.sum()], rtol=1e-10)


# ----------------------------------------------------------------------------------------------------------------------
# Log-likelihood and the decoupled M-step loss
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mean, std", [(0.0, 0.5), (1.3, 0.46), (-2.0, 0.3), (0.9, 1e-3), (5.0, 0.1), (-0.4, 2.0), (0.95, 0.2)]
)
def test_clipped_gaussian_mean_is_the_censored_normals_mean_by_quadrature(mean, std):
    """E[clip(u, -1, 1)]: the mass beyond each bound at that bound, plus the integral of u·N(u; μ, σ²) over the box."""
    inside, _ = integrate.quad(lambda u: u * stats.norm.pdf(u, mean, std), -1.0, 1.0, points=[mean] if abs(mean) < 1 else None)
    expected = -stats.norm.cdf(-1.0, mean, std) + stats.norm.sf(1.0, mean, std) + inside
    value = losses.clipped_gaussian_mean(th.tensor(mean, dtype=th.float64), th.tensor(std, dtype=th.float64))
    assert value.item() == pytest.approx(expected, abs=1e-9)


def test_clipped_gaussian_mean_in_float32_is_exact_at_the_faces_and_finite_far_out():
    mean = th.tensor([40.0, -40.0, -44.0, 0.3, 1e6])
    std = th.tensor([1e-4, 1e-4, 100.0, 1e-4, 1.0])
    value = losses.clipped_gaussian_mean(mean, std)
    wide = losses.clipped_gaussian_mean(mean.double(), std.double())
    assert th.isfinite(value).all() and value[0] == 1.0 and value[1] == -1.0 and value[4] == 1.0
    th.testing.assert_close(value.double(), wide, atol=1e-5, rtol=0)
    assert value[3].item() == pytest.approx(0.3, abs=1e-6)  # a narrow policy inside the box: its mean


def test_clipped_gaussian_mean_broadcasts_and_stays_in_any_box():
    mean, std = th.tensor([[3.0, -0.2], [0.0, -4.0]]), th.tensor([0.5, 1.0])
    value = losses.clipped_gaussian_mean(mean, std, low=-0.5, high=2.0)
    samples = (mean + std * th.randn(400_000, 2, 2, generator=th.Generator().manual_seed(0))).clamp(-0.5, 2.0)
    assert value.shape == (2, 2) and th.all((value >= -0.5) & (value <= 2.0))
    th.testing.assert_close(value, samples.mean(dim=0), atol=5e-3, rtol=0)


def test_gaussian_log_prob_matches_torch_and_scipy_with_broadcasting():
    """(N,B,A) actions against (B,A) stats: equals Normal.log_prob(a).sum(-1) and a scipy.stats.norm loop, shape (N,B)."""
    n_samples, batch_size, action_dim = 5, 4, 3
    mean_old, std_old, _, _ = _gaussian_stats(6, batch_size, action_dim)
    generator = th.Generator().manual_seed(60)
    actions = mean_old + 2.0 * th.randn(n_samples, batch_size, action_dim, generator=generator, dtype=DTYPE)
    log_prob = losses.gaussian_log_prob(actions, mean_old, std_old)
    assert log_prob.shape == (n_samples, batch_size)
    np.testing.assert_allclose(log_prob.numpy(), Normal(mean_old, std_old).log_prob(actions).sum(-1).numpy(), rtol=1e-12)

    a, mu, sigma = actions.numpy(), mean_old.numpy(), std_old.numpy()
    expected = np.zeros((n_samples, batch_size))
    for j in range(n_samples):
        for s in range(batch_size):
            expected[j, s] = sum(stats.norm.logpdf(a[j, s, d], loc=mu[s, d], scale=sigma[s, d]) for d in range(action_dim))
    np.testing.assert_allclose(log_prob.numpy(), expected, rtol=1e-10)


def test_weighted_log_likelihood_matches_numpy_loop_and_detaches_weights():
    """mean_s sum_j q_j log p_j by a numpy loop; the weights receive no gradient, the log-probs get q_j / B."""
    rng = _rng(14)
    weights_np = rng.dirichlet(np.ones(6), size=3).T  # (N=6, B=3)
    log_probs_np = rng.normal(size=(6, 3))
    weights = _t(weights_np).requires_grad_(True)
    log_probs = _t(log_probs_np).requires_grad_(True)
    objective = losses.weighted_log_likelihood(weights, log_probs)
    expected = sum(sum(weights_np[j, s] * log_probs_np[j, s] for j in range(6)) for s in range(3)) / 3
    np.testing.assert_allclose(objective.item(), expected, rtol=1e-12)
    objective.backward()
    assert weights.grad is None
    np.testing.assert_allclose(log_probs.grad.numpy(), weights_np / 3, rtol=1e-12)


def _m_step_inputs(seed: int, n_samples: int = 8, batch_size: int = 5, action_dim: int = 3):
    mean_old, std_old, mean, std = _gaussian_stats(seed, batch_size, action_dim)
    generator = th.Generator().manual_seed(100 + seed)
    actions = mean_old + std_old * th.randn(n_samples, batch_size, action_dim, generator=generator, dtype=DTYPE)
    weights = th.softmax(th.randn(n_samples, batch_size, generator=generator, dtype=DTYPE), dim=0)
    return weights, actions, mean, std, mean_old, std_old


def _grads(weights, actions, mean, std, mean_old, std_old):
    mean = mean.detach().clone().requires_grad_(True)
    std = std.detach().clone().requires_grad_(True)
    loss = losses.decoupled_m_step_loss(weights, actions, mean, std, mean_old, std_old)
    grad_mean, grad_std = th.autograd.grad(loss, (mean, std))
    return loss, grad_mean, grad_std


def test_decoupled_m_step_loss_value_matches_torch_distributions():
    """Loss = -mean_s sum_j q_j [log N(a_j; mu, s_old) + log N(a_j; mu_old, s)] with torch.distributions.Normal."""
    weights, actions, mean, std, mean_old, std_old = _m_step_inputs(0)
    loss = losses.decoupled_m_step_loss(weights, actions, mean, std, mean_old, std_old)
    log_prob_mean = Normal(mean, std_old).log_prob(actions).sum(-1)
    log_prob_std = Normal(mean_old, std).log_prob(actions).sum(-1)
    expected = -((weights * log_prob_mean).sum(0).mean() + (weights * log_prob_std).sum(0).mean())
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-12)


def test_decoupled_m_step_under_a_linear_critic_moves_the_mean_and_widens_the_std():
    """
    Tilting N(mu_old, s_old^2) by exp(c (a - mu_old) / s_old), the E-step of a critic linear in the action, gives
    N(mu_old + c s_old, s_old^2). The decoupled M-step fits its mean, and its std to the second moment about mu_old,
    s_old^2 (1 + c^2): wider than s_old, so only the critic's curvature narrows the policy. Expectations over the tilted
    Gaussian by Gauss-Hermite quadrature (exact for these polynomials), as weighted "samples".
    """
    nodes, node_weights = np.polynomial.hermite_e.hermegauss(40)  # integrates against exp(-x^2 / 2)
    mean_old, std_old = _t(np.array([[0.3, -0.2]])), _t(np.array([[0.5, 0.2]]))
    tilt = np.array([0.4, -1.0])  # c per action dimension, in units of s_old
    # one action dimension tilted at a time: the weights of a sample are shared by its dimensions
    for dim, c in enumerate(tilt):
        weights = node_weights * np.exp(c * nodes)
        weights = _t(weights / weights.sum()).unsqueeze(-1)  # (N, B=1)
        standard = np.zeros((nodes.size, 1, 2))
        standard[:, 0, dim] = nodes
        actions = mean_old + std_old * _t(standard)
        fitted_mean = mean_old.clone()
        fitted_mean[0, dim] += c * std_old[0, dim]
        fitted_std = std_old.clone()
        fitted_std[0, dim] *= math.sqrt(1 + c**2)
        _, grad_mean, grad_std = _grads(weights, actions, fitted_mean, fitted_std, mean_old, std_old)
        np.testing.assert_allclose(grad_mean.numpy(), 0.0, atol=1e-10)
        np.testing.assert_allclose(grad_std[0, dim].item(), 0.0, atol=1e-10)
        _, _, grad_std_old = _grads(weights, actions, fitted_mean, std_old, mean_old, std_old)
        assert grad_std_old[0, dim] < 0  # at s_old the loss still falls as the std grows


def test_decoupled_m_step_gradients_match_closed_form():
    """d/dmu = -(1/B) sum_j q_j (a_j - mu)/s_old^2 and d/ds = -(1/B) sum_j q_j ((a_j - mu_old)^2/s^3 - 1/s)."""
    weights, actions, mean, std, mean_old, std_old = _m_step_inputs(1)
    _, grad_mean, grad_std = _grads(weights, actions, mean, std, mean_old, std_old)
    batch_size = mean.shape[0]
    q = weights.unsqueeze(-1)
    expected_mean = -(q * (actions - mean) / std_old**2).sum(0) / batch_size
    expected_std = -(q * ((actions - mean_old) ** 2 / std**3 - 1.0 / std)).sum(0) / batch_size
    np.testing.assert_allclose(grad_mean.numpy(), expected_mean.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grad_std.numpy(), expected_std.numpy(), rtol=1e-10, atol=1e-14)


def test_decoupled_m_step_mean_gradient_is_the_fixed_std_likelihood_gradient():
    """d loss / d mu equals the gradient of -weighted_log_likelihood(q, log N(a; mu, s_old)) alone (torch Normal)."""
    weights, actions, mean, std, mean_old, std_old = _m_step_inputs(2)
    _, grad_mean, _ = _grads(weights, actions, mean, std, mean_old, std_old)
    mean_leaf = mean.detach().clone().requires_grad_(True)
    reference = -(weights * Normal(mean_leaf, std_old).log_prob(actions).sum(-1)).sum(0).mean()
    (expected,) = th.autograd.grad(reference, mean_leaf)
    np.testing.assert_allclose(grad_mean.numpy(), expected.numpy(), rtol=1e-10, atol=1e-14)
    # and the same through the module's own pieces
    mean_leaf = mean.detach().clone().requires_grad_(True)
    pieces = -losses.weighted_log_likelihood(weights, losses.gaussian_log_prob(actions, mean_leaf, std_old))
    (expected_pieces,) = th.autograd.grad(pieces, mean_leaf)
    np.testing.assert_allclose(grad_mean.numpy(), expected_pieces.numpy(), rtol=1e-10, atol=1e-14)


def test_decoupled_m_step_gradients_are_decoupled():
    """Changing the new std leaves d loss/d mu unchanged; changing the new mean leaves d loss/d std unchanged."""
    weights, actions, mean, std, mean_old, std_old = _m_step_inputs(3)
    _, grad_mean, grad_std = _grads(weights, actions, mean, std, mean_old, std_old)
    _, grad_mean_other_std, grad_std_other_std = _grads(weights, actions, mean, 3.0 * std, mean_old, std_old)
    _, grad_mean_other_mean, grad_std_other_mean = _grads(weights, actions, mean + 2.0, std, mean_old, std_old)
    np.testing.assert_allclose(grad_mean_other_std.numpy(), grad_mean.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad_std_other_mean.numpy(), grad_std.numpy(), rtol=1e-12, atol=1e-15)
    # sanity: each gradient does depend on its own parameter, so the comparisons above are not vacuous
    assert not np.allclose(grad_std_other_std.numpy(), grad_std.numpy())
    assert not np.allclose(grad_mean_other_mean.numpy(), grad_mean.numpy())


def test_decoupled_m_step_no_gradient_into_old_stats_actions_or_weights():
    """mean_old, std_old, actions and weights are stop-gradients: their .grad stays None (or zero) after backward."""
    weights, actions, mean, std, mean_old, std_old = _m_step_inputs(4)
    constants = [t.detach().clone().requires_grad_(True) for t in (weights, actions, mean_old, std_old)]
    mean = mean.detach().clone().requires_grad_(True)
    std = std.detach().clone().requires_grad_(True)
    weights_c, actions_c, mean_old_c, std_old_c = constants
    loss = losses.decoupled_m_step_loss(weights_c, actions_c, mean, std, mean_old_c, std_old_c)
    loss.backward()
    for tensor in constants:
        assert tensor.grad is None or th.count_nonzero(tensor.grad) == 0
    assert mean.grad is not None and std.grad is not None


# ----------------------------------------------------------------------------------------------------------------------
# Lagrange multipliers
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kl,direction", [(0.5, 1.0), (0.01, -1.0)])
def test_multiplier_loss_sgd_step_moves_alpha_towards_constraint(kl, direction):
    """One manual gradient-descent step on raw (alpha = positive(raw)) grows alpha iff KL > eps."""
    epsilon, learning_rate = 0.1, 0.1
    raw = th.tensor([losses.inverse_positive(1.0)], dtype=DTYPE, requires_grad=True)
    alpha_before = losses.positive(raw).item()
    kl_tensor = th.tensor([kl], dtype=DTYPE, requires_grad=True)
    loss = losses.multiplier_loss(losses.positive(raw), epsilon, kl_tensor)
    loss.backward()
    with th.no_grad():
        raw -= learning_rate * raw.grad
    alpha_after = losses.positive(raw).item()
    assert direction * (alpha_after - alpha_before) > 0
    assert kl_tensor.grad is None  # the KL is a constant of the dual step


def test_multiplier_loss_value_and_gradient_match_numpy():
    """Loss = sum alpha (eps - KL) and d loss / d alpha = eps - KL per constraint (numpy)."""
    alpha_np, kl_np, epsilon = np.array([0.5, 2.0, 10.0]), np.array([0.2, 0.001, 0.05]), 0.01
    alpha = _t(alpha_np).requires_grad_(True)
    loss = losses.multiplier_loss(alpha, epsilon, _t(kl_np))
    np.testing.assert_allclose(loss.item(), np.sum(alpha_np * (epsilon - kl_np)), rtol=1e-12)
    loss.backward()
    np.testing.assert_allclose(alpha.grad.numpy(), epsilon - kl_np, rtol=1e-12)


def test_lagrangian_penalty_value_and_no_gradient_into_multiplier():
    """Penalty = sum alpha KL (numpy); gradient reaches the KL (= alpha) but not the multiplier."""
    alpha_np, kl_np = np.array([0.5, 2.0, 10.0]), np.array([0.2, 0.001, 0.05])
    alpha = _t(alpha_np).requires_grad_(True)
    kl = _t(kl_np).requires_grad_(True)
    penalty = losses.lagrangian_penalty(alpha, kl)
    np.testing.assert_allclose(penalty.item(), np.sum(alpha_np * kl_np), rtol=1e-12)
    penalty.backward()
    assert alpha.grad is None
    np.testing.assert_allclose(kl.grad.numpy(), alpha_np, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# Action penalty and critic target
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cost", ["norm", "squared_norm"])
def test_action_penalty_q_is_zero_inside_bounds(cost):
    """Actions inside [-1, 1] (bounds included) have penalty exactly 0, and a gradient of exactly 0 there."""
    actions = _t(_rng(15).uniform(-1.0, 1.0, size=(7, 4, 3)))
    actions[0, 0] = _t([-1.0, 1.0, 0.0])
    actions.requires_grad_(True)
    penalty = losses.action_penalty_q(actions, cost)
    assert penalty.shape == (7, 4)
    assert th.all(penalty == 0)
    (gradient,) = th.autograd.grad(penalty.sum(), actions)
    assert th.all(gradient == 0)


@pytest.mark.parametrize("cost, power", [("norm", 1), ("squared_norm", 2)])
@pytest.mark.parametrize("low,high", [(-1.0, 1.0), (-2.0, 0.5)])
def test_action_penalty_q_matches_numpy_excess(cost, power, low, high):
    """
    Penalty = -d^p with d the Euclidean distance to the box [low, high]^A (math.hypot over the excess of each
    dimension, by a Python loop) and p = 1 for ``"norm"`` (Acme's), 2 for ``"squared_norm"``; its gradient outside
    the box is -p·d^(p-2)·excess (its closed form).
    """
    actions_np = _rng(16).normal(scale=2.0, size=(6, 5, 3))
    actions = _t(actions_np).requires_grad_(True)
    penalty = losses.action_penalty_q(actions, cost, low=low, high=high)
    expected, expected_gradient = np.zeros((6, 5)), np.zeros((6, 5, 3))
    for index in np.ndindex(6, 5):
        excess = [value - high if value > high else (value - low if value < low else 0.0) for value in actions_np[index]]
        distance = math.hypot(*excess)
        expected[index] = -(distance**power)
        if distance > 0:
            expected_gradient[index] = -power * distance ** (power - 2) * np.array(excess)
    assert penalty.shape == (6, 5) and (expected < 0).mean() > 0.5
    np.testing.assert_allclose(penalty.detach().numpy(), expected, rtol=1e-12, atol=1e-15)
    (gradient,) = th.autograd.grad(penalty.sum(), actions)
    np.testing.assert_allclose(gradient.numpy(), expected_gradient, rtol=1e-10, atol=1e-15)


def test_action_penalty_q_refuses_an_unknown_cost():
    with pytest.raises(ValueError, match=r"cost='l1' is invalid, expected 'norm' or 'squared_norm'"):
        losses.action_penalty_q(_t(np.zeros((2, 3))), "l1")  # type: ignore[arg-type]


@pytest.mark.parametrize("tensor_discount", [False, True])
def test_expected_sarsa_target_matches_numpy(tensor_discount):
    """y = r + (1 - done) * discount * v(s') by a numpy loop; done = 1 drops the bootstrap."""
    rng = _rng(17)
    batch_size = 6
    rewards = rng.normal(size=(batch_size, 1))
    dones = np.array([[0.0], [1.0], [0.0], [1.0], [0.0], [0.0]])
    next_values = rng.normal(scale=5.0, size=(batch_size, 1))
    discounts_np = rng.uniform(0.5, 0.99, size=(batch_size, 1)) if tensor_discount else np.full((batch_size, 1), 0.99)
    discounts = _t(discounts_np) if tensor_discount else 0.99

    target = losses.expected_sarsa_target(_t(rewards), _t(dones), discounts, _t(next_values))
    expected = np.zeros((batch_size, 1))
    for s in range(batch_size):
        expected[s, 0] = rewards[s, 0] + (0.0 if dones[s, 0] else discounts_np[s, 0] * next_values[s, 0])
    assert target.shape == (batch_size, 1)
    np.testing.assert_allclose(target.numpy(), expected, rtol=1e-12)
    # terminal transitions are exactly the reward
    terminal = dones[:, 0] == 1.0
    np.testing.assert_array_equal(target.numpy()[terminal], rewards[terminal])


def test_categorical_expectation_matches_torch_distributions():
    """sum_a pi(a|s) f(s, a) equals the mean of f over many draws from torch's Categorical (and an explicit loop)."""
    rng = _rng(23)
    logits = rng.normal(size=(4, 5))
    logits[0, 2] = -np.inf  # an action with probability zero contributes nothing, even if its value is huge
    values = rng.normal(scale=3.0, size=(4, 5))
    values[0, 2] = 1e30
    log_probs = th.log_softmax(_t(logits), dim=-1)
    result = losses.categorical_expectation(_t(values), log_probs)
    probs = np.exp(log_probs.numpy())
    expected = [sum(probs[s, a] * values[s, a] for a in range(5) if probs[s, a] > 0) for s in range(4)]
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12)
    draws = th.distributions.Categorical(logits=log_probs).sample((200_000,))  # (M, B)
    assert not (draws[:, 0] == 2).any()
    monte_carlo = np.take_along_axis(values.T, draws.numpy(), axis=0).mean(axis=0)
    np.testing.assert_allclose(result.numpy(), monte_carlo, atol=0.05)


# ----------------------------------------------------------------------------------------------------------------------
# Parametric policy improvement
# ----------------------------------------------------------------------------------------------------------------------


def test_parametric_improvement_gradients_match_the_closed_form_of_a_quadratic_critic():
    """
    With Q(s, a) = -||a - c||^2, E_{a ~ N(mu, s^2)} Q = -||mu - c||^2 - ||s||^2, so under the decoupled samples the
    objective's gradients are -2 (mu - c) in the mean and -2 s in the std; the Monte-Carlo estimate matches.
    """
    generator = th.Generator().manual_seed(0)
    batch_size, action_dim, n_samples = 4, 3, 400_000
    mean = th.randn(batch_size, action_dim, dtype=DTYPE, generator=generator).requires_grad_(True)
    std = (0.5 + th.rand(batch_size, action_dim, dtype=DTYPE, generator=generator)).requires_grad_(True)
    mean_old, std_old = mean.detach() + 0.3, std.detach() * 1.5
    target = th.randn(batch_size, action_dim, dtype=DTYPE, generator=generator)
    noise = th.randn(n_samples, batch_size, action_dim, dtype=DTYPE, generator=generator)
    actions_mean, actions_std = losses.decoupled_reparameterised_actions(noise, mean, std, mean_old, std_old)

    def critic(actions: th.Tensor) -> th.Tensor:
        return -((actions - target) ** 2).sum(-1)

    baseline = th.randn(batch_size, dtype=DTYPE, generator=generator)
    loss = losses.parametric_improvement_loss(critic(actions_mean), critic(actions_std), baseline)
    grad_mean, grad_std = th.autograd.grad(loss, (mean, std))
    # d(-loss)/d mu = mean_s of -2 (mu - c); the loss averages over the B states
    np.testing.assert_allclose(grad_mean.numpy(), (2 * (mean - target) / batch_size).detach().numpy(), atol=2e-2)
    np.testing.assert_allclose(grad_std.numpy(), (2 * std / batch_size).detach().numpy(), atol=2e-2)
    expected = ((mean - target) ** 2 + std_old**2 + (mean_old - target) ** 2 + std**2).sum(-1) + 2 * baseline
    np.testing.assert_allclose(loss.item(), expected.mean().item(), rtol=1e-2)
