"""
The mathematics of MPO as pure functions (Abdolmaleki et al. 2018, "Maximum a Posteriori Policy Optimisation",
arXiv 1806.06920). Nothing here touches a network, an optimiser or a buffer: every function maps tensors to tensors,
so each one can be tested against an independent computation.

Shapes: ``N`` action samples per state, ``B`` states in the batch, ``A`` action dimensions.
Sampled quantities are laid out ``(N, B, ...)`` (samples first), like ``Distribution.sample((N,))``.
"""

import math
from typing import NamedTuple

import torch as th
from torch.nn import functional as F


def positive(raw: th.Tensor, floor: float = 1e-8) -> th.Tensor:
    """
    Map an unconstrained parameter to a strictly positive multiplier: ``softplus(raw) + floor``.
    Used for the temperature η and the Lagrange multipliers α (the paper requires η > 0 and α > 0).

    :param raw: Unconstrained parameter
    :param floor: Smallest value the multiplier may take
    :return: The positive multiplier
    """
    return F.softplus(raw) + floor


def inverse_positive(value: float, floor: float = 1e-8) -> float:
    """
    Inverse of :func:`positive`: the raw parameter whose multiplier is ``value``.

    :param value: Desired multiplier, greater than ``floor``
    :param floor: The floor used by :func:`positive`
    :return: The raw parameter
    """
    if value <= floor:
        raise ValueError(f"A multiplier's initial value must exceed its floor {floor}, got {value}")
    shifted = value - floor
    # softplus^-1(y) = log(exp(y) - 1) = y + log(1 - exp(-y)), stable for large y
    return shifted + math.log(-math.expm1(-shifted))


def temperature_dual(q_values: th.Tensor, temperature: th.Tensor, epsilon: float) -> th.Tensor:
    """
    Convex dual of the non-parametric E-step (paper, Sec. 3.2, Eq. (9)); its minimiser is the temperature η.

    g(η) = η·ε + η · mean_s log( (1/N) Σ_j exp(Q(s, a_j) / η) ),  a_j ~ π_old(·|s)

    computed with ``logsumexp`` for stability. ``q_values`` should be detached: the dual only trains η.

    :param q_values: Q(s, a_j) of N samples per state, shape (N, B)
    :param temperature: η > 0, a scalar tensor
    :param epsilon: Bound ε on KL(q || π_old)
    :return: g(η), a scalar
    """
    n_samples = q_values.shape[0]
    log_mean_exp = th.logsumexp(q_values / temperature, dim=0) - math.log(n_samples)
    return temperature * epsilon + temperature * log_mean_exp.mean()


def e_step_weights(q_values: th.Tensor, temperature: th.Tensor) -> th.Tensor:
    """
    Non-parametric variational distribution of the E-step (paper, Sec. 3.2, Eq. (8)) over samples of π_old:

    q(a_j | s) ∝ π_old(a_j | s) · exp(Q(s, a_j) / η)

    Because the a_j are drawn from π_old, the density cancels and the weights are a softmax over the N samples.

    :param q_values: Q(s, a_j), shape (N, B)
    :param temperature: η > 0
    :return: Weights q_j(s), shape (N, B), summing to one over the samples of each state; no gradient flows
    """
    return th.softmax(q_values.detach() / temperature.detach(), dim=0)


def categorical_e_step_weights(q_values: th.Tensor, log_probs_old: th.Tensor, temperature: th.Tensor) -> th.Tensor:
    """
    Exact E-step for a discrete action set (paper, Sec. 3.2, Eq. (8) evaluated on every action):

    q(a | s) ∝ π_old(a | s) · exp(Q(s, a) / η)

    :param q_values: Q(s, a) for every action, shape (B, n_actions)
    :param log_probs_old: log π_old(a | s), shape (B, n_actions)
    :param temperature: η > 0
    :return: q(a | s), shape (B, n_actions), rows summing to one; no gradient flows
    """
    return th.softmax(log_probs_old.detach() + q_values.detach() / temperature.detach(), dim=-1)


def categorical_temperature_dual(
    q_values: th.Tensor, log_probs_old: th.Tensor, temperature: th.Tensor, epsilon: float
) -> th.Tensor:
    """
    Dual of the E-step with the expectation under π_old taken exactly over a discrete action set (Sec. 3.2, Eq. (9)):

    g(η) = η·ε + η · mean_s log Σ_a π_old(a|s) exp(Q(s, a) / η)

    :param q_values: Q(s, a), shape (B, n_actions), detached
    :param log_probs_old: log π_old(a | s), shape (B, n_actions)
    :param temperature: η > 0
    :param epsilon: Bound ε on KL(q || π_old)
    :return: g(η), a scalar
    """
    log_partition = th.logsumexp(log_probs_old.detach() + q_values / temperature, dim=-1)
    return temperature * epsilon + temperature * log_partition.mean()


def sample_kl_to_old(weights: th.Tensor) -> th.Tensor:
    """
    Achieved KL(q || π_old) of the E-step, estimated on the samples: with a_j ~ π_old and self-normalised weights
    q_j, KL ≈ Σ_j q_j log(N q_j), averaged over states. A diagnostic of how close the E-step is to its bound ε.

    :param weights: E-step weights, shape (N, B), each column summing to one
    :return: Mean KL over states, a scalar
    """
    n_samples = weights.shape[0]
    return th.sum(weights * th.log(n_samples * weights + 1e-12), dim=0).mean()


def action_penalty_q(actions: th.Tensor, low: float = -1.0, high: float = 1.0) -> th.Tensor:
    """
    Action penalisation objective of MO-MPO (Abdolmaleki et al. 2020, "A distributional view on multi-objective
    policy optimization", arXiv 2005.07513, its action-norm penalty): Q_penalty(s, a) = −‖a − clip(a, low, high)‖²,
    so the policy is pulled back
    inside the action bounds by a second E-step with its own temperature and KL bound.

    :param actions: Unbounded Gaussian samples, shape (..., A)
    :param low: Lower bound of the (normalised) action space
    :param high: Upper bound of the (normalised) action space
    :return: The penalty "Q-values", shape (...)
    """
    return -th.sum((actions - actions.clamp(low, high)) ** 2, dim=-1)


class DecoupledKL(NamedTuple):
    """The two halves of the decoupled Gaussian trust region, per action dimension and averaged over states."""

    mean: th.Tensor
    std: th.Tensor


def gaussian_kl_mean(mean_old: th.Tensor, mean: th.Tensor, std_old: th.Tensor) -> th.Tensor:
    """
    Mean half of the decoupled KL (paper, Appendix D.3, Eq. (27)):
    C_μ = ½ (μ − μ_old)ᵀ Σ_old⁻¹ (μ − μ_old) = KL(N(μ_old, Σ_old) || N(μ, Σ_old)) for a diagonal Σ.

    The paper prints the mean term with the new Σ⁻¹ (so that C_μ + C_Σ is exactly the full KL); like DeepMind's
    implementation we use Σ_old, which makes C_μ depend on the mean alone, as the decoupling intends.
    With Σ = Σ_old the two coincide.

    :param mean_old: Mean of π_old, shape (B, A)
    :param mean: Mean of π_θ, shape (B, A)
    :param std_old: Standard deviation of π_old, shape (B, A)
    :return: The KL per state and action dimension, shape (B, A)
    """
    return 0.5 * ((mean - mean_old) / std_old) ** 2


def gaussian_kl_std(std_old: th.Tensor, std: th.Tensor) -> th.Tensor:
    """
    Covariance half of the decoupled KL (paper, Appendix D.3, Eq. (27)):
    C_Σ = ½ (tr(Σ⁻¹Σ_old) − n + ln(|Σ| / |Σ_old|)) = KL(N(μ_old, Σ_old) || N(μ_old, Σ)) for a diagonal Σ.

    :param std_old: Standard deviation of π_old, shape (B, A)
    :param std: Standard deviation of π_θ, shape (B, A)
    :return: The KL per state and action dimension, shape (B, A)
    """
    ratio = (std_old / std) ** 2
    return 0.5 * (ratio - 1.0 - th.log(ratio))


def decoupled_gaussian_kl(
    mean_old: th.Tensor, std_old: th.Tensor, mean: th.Tensor, std: th.Tensor, per_dim: bool = True
) -> DecoupledKL:
    """
    Both halves of the decoupled trust region, averaged over states. With ``per_dim`` each action dimension keeps its
    own KL (one multiplier per dimension, as in DeepMind's implementation); otherwise the KLs are summed over
    dimensions (one joint constraint).

    :param mean_old: Mean of π_old, shape (B, A)
    :param std_old: Standard deviation of π_old, shape (B, A)
    :param mean: Mean of π_θ, shape (B, A)
    :param std: Standard deviation of π_θ, shape (B, A)
    :param per_dim: Keep one KL per action dimension (shape (A,)) rather than their sum (shape (1,))
    :return: The mean and covariance KLs
    """
    kl_mean = gaussian_kl_mean(mean_old, mean, std_old).mean(dim=0)
    kl_std = gaussian_kl_std(std_old, std).mean(dim=0)
    if not per_dim:
        kl_mean, kl_std = kl_mean.sum(dim=-1, keepdim=True), kl_std.sum(dim=-1, keepdim=True)
    return DecoupledKL(mean=kl_mean, std=kl_std)


def gaussian_log_prob(actions: th.Tensor, mean: th.Tensor, std: th.Tensor) -> th.Tensor:
    """
    Log-density of a diagonal Gaussian, summed over action dimensions.

    :param actions: Points, shape (N, B, A) (or anything broadcasting against ``mean``)
    :param mean: Mean, shape (B, A)
    :param std: Standard deviation, shape (B, A)
    :return: log N(a; μ, diag(σ²)), shape (N, B)
    """
    z = (actions - mean) / std
    return (-0.5 * z**2 - th.log(std) - 0.5 * math.log(2 * math.pi)).sum(dim=-1)


def weighted_log_likelihood(weights: th.Tensor, log_probs: th.Tensor) -> th.Tensor:
    """
    Weighted maximum-likelihood objective of the M-step (paper, Sec. 3.3, Eq. (10) without the prior):
    mean_s Σ_j q_j(s) log π_θ(a_j | s), to be maximised. The weights are constants of the E-step.

    :param weights: E-step weights, shape (N, B)
    :param log_probs: log π_θ(a_j | s), shape (N, B)
    :return: The objective, a scalar
    """
    return th.sum(weights.detach() * log_probs, dim=0).mean()


def decoupled_m_step_loss(
    weights: th.Tensor,
    actions: th.Tensor,
    mean: th.Tensor,
    std: th.Tensor,
    mean_old: th.Tensor,
    std_old: th.Tensor,
) -> th.Tensor:
    """
    Negative weighted log-likelihood of the M-step with the decoupled parametrisation (paper, Appendix D.3): the samples
    are scored under π_μ = N(μ_θ, σ_old) and π_Σ = N(μ_old, σ_θ), so the mean is fitted with the covariance held at its
    old value and vice versa. The old statistics are stop-gradients.

    :param weights: E-step weights, shape (N, B); several objectives' weights may be summed beforehand
    :param actions: The sampled actions, shape (N, B, A)
    :param mean: Mean of π_θ, shape (B, A)
    :param std: Standard deviation of π_θ, shape (B, A)
    :param mean_old: Mean of π_old, shape (B, A)
    :param std_old: Standard deviation of π_old, shape (B, A)
    :return: −(log-likelihood under π_μ + log-likelihood under π_Σ), a scalar
    """
    mean_old, std_old, actions = mean_old.detach(), std_old.detach(), actions.detach()
    log_prob_mean = gaussian_log_prob(actions, mean, std_old)
    log_prob_std = gaussian_log_prob(actions, mean_old, std)
    return -(weighted_log_likelihood(weights, log_prob_mean) + weighted_log_likelihood(weights, log_prob_std))


def lagrangian_penalty(multiplier: th.Tensor, kl: th.Tensor) -> th.Tensor:
    """
    The trust-region term the policy pays in the M-step's Lagrangian (paper, Sec. 3.3, Eq. (12) relaxed as in
    Appendix D.3, where the multipliers are called η_μ and η_Σ): α·KL with α held
    fixed (detached), summed over constraints.

    :param multiplier: α > 0, one per constraint
    :param kl: The constrained KL, one per constraint
    :return: Σ α·KL, a scalar
    """
    return th.sum(multiplier.detach() * kl)


def multiplier_loss(multiplier: th.Tensor, epsilon: float, kl: th.Tensor) -> th.Tensor:
    """
    Loss whose gradient step on α is the dual step of the M-step's Lagrangian (paper, Appendix D.3 and Algorithm 2):
    α·(ε − KL), with KL held fixed. Minimising it grows α while the constraint is violated (KL > ε) and shrinks it
    otherwise.

    :param multiplier: α > 0, one per constraint
    :param epsilon: The KL bound
    :param kl: The constrained KL, one per constraint
    :return: Σ α·(ε − KL), a scalar
    """
    return th.sum(multiplier * (epsilon - kl.detach()))


def expected_sarsa_target(
    rewards: th.Tensor, dones: th.Tensor, discounts: th.Tensor | float, next_values: th.Tensor
) -> th.Tensor:
    """
    Expected-SARSA critic target (paper, Sec. 4, Eq. (13) with the Retrace traces c_k cut to zero; with n-step
    rewards it is the uncorrected n-step return):

    y = r + (1 − done) · γⁿ · E_{a' ~ π_old(·|s')} Q'(s', a')

    ``dones`` must be true terminations only: time-limit truncations keep the bootstrap (SB3's replay buffers already
    clear ``done`` on timeouts when ``handle_timeout_termination`` is on).

    :param rewards: (Discounted n-step) rewards, shape (B, 1)
    :param dones: Terminations, shape (B, 1)
    :param discounts: γⁿ per sample, shape (B, 1), or a float
    :param next_values: E_{π_old} Q'(s', ·), estimated from samples of a Gaussian policy or exact for a categorical
        one (:func:`categorical_expectation`), shape (B, 1)
    :return: Targets, shape (B, 1)
    """
    return rewards + (1.0 - dones) * discounts * next_values


def categorical_expectation(values: th.Tensor, log_probs: th.Tensor) -> th.Tensor:
    """
    Exact expectation over a discrete action set, E_{a ~ π(·|s)} f(s, a) = Σ_a π(a|s) f(s, a): the expected
    Q-value of the critic targets and of Retrace's E_π Q(s, ·) for a categorical policy (paper, Sec. 4, Eq. (13)).

    :param values: f(s, a) for every action, shape (B, n_actions)
    :param log_probs: log π(a|s), shape (B, n_actions)
    :return: The expectation per state, shape (B,)
    """
    return th.sum(log_probs.exp() * values, dim=-1)


def categorical_kl(log_probs_old: th.Tensor, log_probs: th.Tensor) -> th.Tensor:
    """
    KL(π_old || π_θ) between categorical distributions given by log-probabilities, per state
    (the trust region of the discrete M-step, paper Sec. 3.3, Eq. (12)).

    :param log_probs_old: log π_old(a | s), shape (B, n_actions)
    :param log_probs: log π_θ(a | s), shape (B, n_actions)
    :return: KL per state, shape (B,)
    """
    probs_old = log_probs_old.exp()
    # Actions with π_old(a|s) = 0 contribute nothing (0·log 0 = 0), even where log π_θ(a|s) = -inf
    return th.sum(th.where(probs_old > 0, probs_old * (log_probs_old - log_probs), 0.0), dim=-1)
