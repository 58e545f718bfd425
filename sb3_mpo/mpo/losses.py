"""
The mathematics of MPO as pure functions (Abdolmaleki et al. 2018, "Maximum a Posteriori Policy Optimisation",
arXiv 1806.06920). Nothing here touches a network, an optimiser or a buffer: every function maps tensors to tensors,
so each one can be tested against an independent computation.

Shapes: ``N`` action samples per state, ``B`` states in the batch, ``A`` action dimensions.
Sampled quantities are laid out ``(N, B, ...)`` (samples first), like ``Distribution.sample((N,))``.
"""

import math
from typing import Literal, NamedTuple, cast

import numpy as np
import torch as th
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

#: The smallest value a temperature or Lagrange multiplier takes (:func:`positive`)
MULTIPLIER_FLOOR = 1e-8
#: How the action penalty grows with an action's distance d to the box (:func:`action_penalty_q`): ``"norm"`` is −d,
#: ``"squared_norm"`` is −d²
PenaltyCost = Literal["norm", "squared_norm"]


def positive(raw: th.Tensor, floor: float = MULTIPLIER_FLOOR) -> th.Tensor:
    """
    Map an unconstrained parameter to a strictly positive multiplier: ``softplus(raw) + floor``.
    Used for the temperature η and the Lagrange multipliers α (the paper requires η > 0 and α > 0).

    :param raw: Unconstrained parameter
    :param floor: Smallest value the multiplier may take
    :return: The positive multiplier
    """
    return F.softplus(raw) + floor


def inverse_positive(value: float, floor: float = MULTIPLIER_FLOOR) -> float:
    """
    Inverse of :func:`positive`: the raw parameter whose multiplier is ``value``.

    :param value: Desired multiplier, greater than ``floor``
    :param floor: The floor used by :func:`positive`
    :return: The raw parameter
    """
    if value <= floor:
        raise ValueError(f"A multiplier's initial value must exceed its floor {floor}, got {value}")
    return float(inverse_positive_tensor(th.tensor(value, dtype=th.float64), floor))


def inverse_positive_tensor(values: th.Tensor, floor: float = MULTIPLIER_FLOOR) -> th.Tensor:
    """
    Inverse of :func:`positive` for a tensor, e.g. multipliers set from a computed value (:func:`inverse_positive`
    is this for one float).

    :param values: Multipliers; values at or below ``floor`` map to the raw parameter of the smallest normal float
        above it
    :param floor: The floor used by :func:`positive`
    :return: The raw parameters
    """
    shifted = (values - floor).clamp(min=th.finfo(values.dtype).tiny)
    # softplus^-1(y) = log(exp(y) - 1) = y + log(1 - exp(-y)), stable for large y
    return shifted + th.log(-th.expm1(-shifted))


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
    # Centring each state's Q-values on their maximum changes neither g's gradient in η nor its minimiser, and keeps
    # Q/η small where |Q| ≫ η (in float32 the raw form loses the gradient once |Q|/η reaches about 1e4)
    q_max = q_values.detach().max(dim=0).values
    log_mean_exp = th.logsumexp((q_values - q_max) / temperature, dim=0) - math.log(n_samples)
    return temperature * epsilon + temperature * log_mean_exp.mean() + q_max.mean()


def e_step_weights(q_values: th.Tensor, temperature: th.Tensor) -> th.Tensor:
    """
    Non-parametric variational distribution of the E-step (paper, Sec. 3.2, Eq. (8)) over samples of π_old:

    q(a_j | s) ∝ π_old(a_j | s) · exp(Q(s, a_j) / η)

    Because the a_j are drawn from π_old, the density cancels and the weights are a softmax over the N samples.

    :param q_values: Q(s, a_j), shape (N, B), or (..., N, B) for several objectives with temperatures (..., 1, 1)
    :param temperature: η > 0
    :return: Weights q_j(s), shaped like ``q_values``, summing to one over the samples of each state; no gradient flows
    """
    return th.softmax(q_values.detach() / temperature.detach(), dim=-2)


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


def greedy_e_step_kl(q_values: th.Tensor, log_probs_old: th.Tensor) -> th.Tensor:
    """
    The largest KL(q || π_old) that the exact discrete E-step (Sec. 3.2, Eq. (8)) reaches: as η → 0, q(·|s) puts all
    its mass on the best action a*(s) = argmax_a Q(s, a), whose KL from π_old is −log π_old(a*|s). Once π_old is
    confident in its best action this falls below ε, and no temperature meets the bound.

    :param q_values: Q(s, a) for every action, shape (B, n_actions)
    :param log_probs_old: log π_old(a | s), shape (B, n_actions)
    :return: mean_s −log π_old(a*(s) | s) (ties: the first best action), a scalar; no gradient flows
    """
    best = q_values.detach().argmax(dim=-1, keepdim=True)
    return -log_probs_old.detach().gather(-1, best).mean()


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
    q_max = q_values.detach().max(dim=-1, keepdim=True).values  # as in temperature_dual
    log_partition = th.logsumexp(log_probs_old.detach() + (q_values - q_max) / temperature, dim=-1)
    return temperature * epsilon + temperature * log_partition.mean() + q_max.mean()


def _tilted_statistics(
    centred_q: th.Tensor, log_temperature: th.Tensor, log_prior: th.Tensor | None
) -> tuple[th.Tensor, th.Tensor]:
    """
    KL(q_η || p) and Var_{q_η}(Q/η), each averaged over states (see :func:`tilted_kl`).

    :param centred_q: Q-values minus their maximum per state, shape (..., K, B)
    :param log_temperature: log η, shape (...)
    :param log_prior: log p, shape (..., K, B), or ``None`` for a uniform p over the K actions
    :return: Both, shape (...)
    """
    scaled = centred_q * th.exp(-log_temperature)[..., None, None]
    logits = scaled if log_prior is None else scaled + log_prior
    log_partition = th.logsumexp(logits, dim=-2, keepdim=True)
    weights = th.exp(logits - log_partition)
    first = th.sum(weights * scaled, dim=-2)
    second = th.sum(weights * scaled**2, dim=-2)
    kl = first - log_partition.squeeze(-2)
    if log_prior is None:
        kl = kl + math.log(centred_q.shape[-2])
    return kl.mean(dim=-1), (second - first**2).mean(dim=-1)


def tilted_kl(q_values: th.Tensor, temperature: th.Tensor, log_prior: th.Tensor | None = None) -> th.Tensor:
    """
    KL(q_η || p) of the E-step's solution q_η(a|s) ∝ p(a|s)·exp(Q(s, a)/η) (paper, Sec. 3.2, Eq. (8)) to its prior p,
    averaged over states: the quantity the E-step bounds by ε. With the log-partition log Z_s = log Σ_a p·exp(Q/η),

    KL_s = E_{q_η}[Q(s, ·)] / η − log Z_s

    so that g'(η) = ε − mean_s KL_s for the dual g of Eq. (9). Actions with p = 0 carry no weight. Leading dimensions
    are independent problems, or candidate temperatures: Q of shape (K, B) with η of shape (T,) gives T KLs.

    :param q_values: Q(s, a) of K candidate actions (samples of π_old, or a whole discrete action set), shape (..., K, B)
    :param temperature: η > 0, shape (...) (a scalar for one problem)
    :param log_prior: log p(a|s), shape (..., K, B); ``None`` for K samples of π_old (p uniform over them, 1/K)
    :return: The mean KL over states, shape (...)
    """
    centred = q_values - q_values.max(dim=-2, keepdim=True).values
    return _tilted_statistics(centred, temperature.log(), log_prior)[0]


def solve_temperature(
    q_values: th.Tensor,
    epsilon: float | th.Tensor,
    log_prior: th.Tensor | None = None,
    initial: th.Tensor | None = None,
    iterations: int = 8,
    span: float = 1e6,
) -> th.Tensor:
    """
    The E-step's temperature, solved on the batch: the minimiser η* of the convex dual g(η) (paper, Sec. 3.2, Eq. (9)),
    i.e. the η at which KL(q_η || p) = ε (:func:`tilted_kl`, which falls monotonically from its greedy limit at η → 0
    to 0 at η → ∞). Being a function of the batch alone, η* follows any scale of the rewards: multiplying Q by c
    multiplies η* by c. Leading dimensions are independent E-steps (e.g. the return's and the action penalty's),
    solved together.

    The root is bracketed from the data: tilting a distribution by Q/η moves it by at most KL ≤ (ΔQ_s/η)²/8 (Hoeffding's
    lemma, ΔQ_s the spread of state s's Q-values), so η_hi = sqrt(mean_s ΔQ_s² / (8ε)) satisfies the bound, and
    η_hi / ``span`` is the bracket's lower end. Newton's method then runs on x = log η, where
    dKL/dx = −mean_s Var_{q_η}(Q/η); a step that would leave the bracket is replaced by bisection, and each iterate
    narrows the bracket. The number of steps is fixed (no host-device synchronisation). When even the lower end
    satisfies the bound (ε at or above the greedy KL, e.g. ε ≥ log K for samples), the result tends to the lower end:
    the E-step is then practically greedy.

    :param q_values: Q(s, a) of K candidate actions per state, shape (..., K, B); no gradient flows
    :param epsilon: Bound ε on KL(q || p), a float or one per problem, shape (...)
    :param log_prior: log p(a|s), shape (..., K, B); ``None`` for K samples of π_old
    :param initial: A first guess of η*, shape (...), such as the previous batch's (clipped into the bracket);
        ``None``, or a non-finite or non-positive guess, starts at the bracket's upper end
    :param iterations: Newton steps
    :param span: Ratio between the bracket's upper and lower ends
    :return: η* > 0, shape (...)
    """
    q_values = q_values.detach()
    log_prior = None if log_prior is None else log_prior.detach()
    tiny = th.finfo(q_values.dtype).tiny
    centred = q_values - q_values.max(dim=-2, keepdim=True).values
    spread_squared = th.mean(centred.min(dim=-2).values ** 2, dim=-1)
    high = 0.5 * th.log(spread_squared / (8.0 * epsilon) + tiny)
    low = high - math.log(span)
    log_temperature = high
    if initial is not None:
        guess = initial.detach().log()
        log_temperature = th.where(th.isfinite(guess), th.clamp(guess, low, high), high)
    for _ in range(iterations):
        kl, variance = _tilted_statistics(centred, log_temperature, log_prior)
        excess = kl - epsilon
        # KL falls as η grows: an excess means η* lies above the iterate
        low = th.where(excess > 0, log_temperature, low)
        high = th.where(excess > 0, high, log_temperature)
        newton = log_temperature + excess / variance.clamp(min=tiny)
        inside = (newton >= low) & (newton <= high)
        log_temperature = th.where(inside, newton, 0.5 * (low + high))
    return log_temperature.exp()


def sample_kl_to_old(weights: th.Tensor) -> th.Tensor:
    """
    Achieved KL(q || π_old) of the E-step, estimated on the samples: with a_j ~ π_old and self-normalised weights
    q_j, KL ≈ Σ_j q_j log(N q_j), averaged over states. A diagnostic of how close the E-step is to its bound ε.

    :param weights: E-step weights, shape (N, B), each column summing to one
    :return: Mean KL over states, a scalar
    """
    n_samples = weights.shape[0]
    return th.sum(weights * th.log(n_samples * weights + 1e-12), dim=0).mean()


def action_penalty_q(actions: th.Tensor, cost: PenaltyCost, low: float = -1.0, high: float = 1.0) -> th.Tensor:
    """
    Action penalisation objective of MO-MPO (Abdolmaleki et al. 2020, "A distributional view on multi-objective
    policy optimization", arXiv 2005.07513): a second objective that is zero inside the action bounds and falls with
    the distance d = ‖a − clip(a, low, high)‖ beyond them, so that a second E-step with its own temperature and KL bound
    pulls the policy back inside. DeepMind's MPO (Acme's TF and JAX losses) uses Q_penalty = −d (``cost="norm"``);
    ``"squared_norm"`` gives −d².

    :param actions: Unbounded Gaussian samples, shape (..., A)
    :param cost: ``"norm"`` (−d) or ``"squared_norm"`` (−d²)
    :param low: Lower bound of the (normalised) action space
    :param high: Upper bound of the (normalised) action space
    :return: The penalty "Q-values", shape (...)
    """
    excess = actions - actions.clamp(low, high)
    if cost == "norm":  # its gradient at d = 0 (inside the box) is torch's subgradient 0
        return -th.linalg.vector_norm(excess, dim=-1)
    if cost == "squared_norm":
        return -th.sum(excess**2, dim=-1)
    raise ValueError(f"cost={cost!r} is invalid, expected 'norm' or 'squared_norm'")


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


def clipped_gaussian_mean(mean: th.Tensor, std: th.Tensor, low: float = -1.0, high: float = 1.0) -> th.Tensor:
    """
    The expected action of a Gaussian policy whose samples are clipped into the box, E[clip(u, low, high)] for
    u ~ N(μ, σ²) per dimension (the mean of a censored normal distribution):
    low·Φ(α) + high·(1 − Φ(β)) + μ·(Φ(β) − Φ(α)) + σ·(φ(α) − φ(β)), with α = (low − μ)/σ and β = (high − μ)/σ.
    It is the average of the actions the behaviour policy executes; clip(μ), the policy's mode, leaves the box's
    faces only where μ is inside the box.

    :param mean: μ
    :param std: σ > 0, broadcasting against ``mean``
    :param low: The box's lower bound
    :param high: The box's upper bound
    :return: E[clip(u, low, high)], of the broadcast shape, inside [low, high]
    """
    alpha, beta = (low - mean) / std, (high - mean) / std
    below, above = th.special.ndtr(alpha), th.special.ndtr(-beta)  # each tail from its own side: exact far out
    density = (th.exp(-0.5 * alpha**2) - th.exp(-0.5 * beta**2)) / math.sqrt(2 * math.pi)
    return (low * below + high * above + mean * (1.0 - below - above) + std * density).clamp(low, high)


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

    A Gaussian log-likelihood is quadratic in the sample, so the weighted sum over the N samples only needs three
    weighted moments of the samples about μ_old (constants of the E-step, computed once without gradient):
    m₀ = Σ_j q_j, D = Σ_j q_j (a_j − μ_old) and S = Σ_j q_j (a_j − μ_old)². With δ = μ_θ − μ_old, per action dimension,

    Σ_j q_j log N(a_j; μ_θ, σ_old) = −(S − 2δD + m₀δ²) / (2σ_old²) − m₀ (log σ_old + ½ log 2π)
    Σ_j q_j log N(a_j; μ_old, σ_θ) = −S / (2σ_θ²) − m₀ (log σ_θ + ½ log 2π)

    which is the same objective, exactly, with a (B, A) graph for autograd instead of an (N, B, A) one.

    :param weights: E-step weights, shape (N, B); several objectives' weights may be summed beforehand
    :param actions: The sampled actions, shape (N, B, A)
    :param mean: Mean of π_θ, shape (B, A)
    :param std: Standard deviation of π_θ, shape (B, A)
    :param mean_old: Mean of π_old, shape (B, A)
    :param std_old: Standard deviation of π_old, shape (B, A)
    :return: −mean_s (log-likelihood under π_μ + log-likelihood under π_Σ), a scalar
    """
    mean_old, std_old = mean_old.detach(), std_old.detach()
    with th.no_grad():
        weights = weights.unsqueeze(-1)
        deviations = actions - mean_old
        mass = weights.sum(dim=0)  # m₀, (B, 1)
        first = th.sum(weights * deviations, dim=0)  # D, (B, A)
        second = th.sum(weights * deviations**2, dim=0)  # S, (B, A)
    shift = mean - mean_old
    half_log_two_pi = 0.5 * math.log(2 * math.pi)
    log_likelihood_mean = -(second - 2 * shift * first + mass * shift**2) / (2 * std_old**2) - mass * (
        th.log(std_old) + half_log_two_pi
    )
    log_likelihood_std = -second / (2 * std**2) - mass * (th.log(std) + half_log_two_pi)
    return -th.sum(log_likelihood_mean + log_likelihood_std, dim=-1).mean()


def decoupled_reparameterised_actions(
    noise: th.Tensor, mean: th.Tensor, std: th.Tensor, mean_old: th.Tensor, std_old: th.Tensor
) -> tuple[th.Tensor, th.Tensor]:
    """
    Reparameterised samples for the parametric policy improvement (paper, Sec. 3.2, the parametric variational
    distribution q(a|s; θ)), decoupled as the M-step is (Appendix D.3): a_μ = μ_θ + σ_old·ξ carries gradient to the mean
    only and a_Σ = μ_old + σ_θ·ξ to the standard deviation only, with the same standard normal noise ξ.

    :param noise: ξ ~ N(0, I), shape (N, B, A)
    :param mean: Mean of π_θ, shape (B, A)
    :param std: Standard deviation of π_θ, shape (B, A)
    :param mean_old: Mean of π_old, shape (B, A)
    :param std_old: Standard deviation of π_old, shape (B, A)
    :return: a_μ and a_Σ, each of shape (N, B, A)
    """
    mean_old, std_old, noise = mean_old.detach(), std_old.detach(), noise.detach()
    return mean + std_old * noise, mean_old + std * noise


def parametric_improvement_loss(q_values_mean: th.Tensor, q_values_std: th.Tensor, baseline: th.Tensor) -> th.Tensor:
    """
    Loss of the parametric policy improvement (paper, Sec. 3.2 with a parametric q, which then is the policy itself):
    −mean_s E_{ξ}[A(s, a_μ(ξ)) + A(s, a_Σ(ξ))], the Monte-Carlo estimate of the expected advantage under π_μ and π_Σ
    (see :func:`decoupled_reparameterised_actions`), whose gradient reaches θ through the actions. The baseline V(s)
    changes the value, not the gradient.

    :param q_values_mean: Q(s, a_μ), shape (N, B)
    :param q_values_std: Q(s, a_Σ), shape (N, B)
    :param baseline: V(s), shape (B,); no gradient flows into it
    :return: The loss, a scalar
    """
    baseline = baseline.detach()
    return -((q_values_mean - baseline).mean() + (q_values_std - baseline).mean())


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


def clipped_values(values: th.Tensor) -> th.Tensor:
    """
    Clipped double Q-learning's value of an ensemble of critics (Fujimoto et al. 2018, "Addressing Function
    Approximation Error in Actor-Critic Methods", Eq. (10), for any number of critics): the smallest of their estimates,
    min_i Q_i(s, a), which counters the overestimation that a maximising improvement step draws from one critic's errors.

    :param values: The critics' estimates, shape (n_critics, ...)
    :return: Their minimum, shape (...)
    """
    return values.amin(dim=0)


def critic_regression_loss(q_values: th.Tensor, targets: th.Tensor) -> th.Tensor:
    """
    The critics' regression loss (paper, Sec. 4: the squared error of Q against its targets), summed over an ensemble
    of critics that share their targets, as SB3's SAC and TD3 train theirs:

    L = ½ Σ_i mean_b (Q_i(s_b, a_b) − y_b)²

    :param q_values: Each critic's value of the stored pairs, shape (B, n_critics)
    :param targets: Their targets y, shape (B, 1)
    :return: The loss, a scalar
    """
    return 0.5 * (q_values - targets).square().mean(dim=0).sum()


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


def categorical_projection(target_atoms: th.Tensor, probs: th.Tensor, atoms: th.Tensor) -> th.Tensor:
    """
    Project a distribution with mass ``probs`` on the shifted atoms T z_j (e.g. r + γⁿ·z_j) onto the fixed support
    z_1 < ... < z_K of a categorical critic (Bellemare et al. 2017, "A Distributional Perspective on Reinforcement
    Learning", Eq. (7)): each mass p_j is split between the two support atoms around clip(T z_j, z_1, z_K), in
    proportion to its closeness,

    (Φ T p)_i = Σ_j [1 − |clip(T z_j, z_1, z_K) − z_i| / Δz]₀¹ · p_j,

    which keeps the total mass and, for targets inside the support, the mean.

    :param target_atoms: Where each atom's mass moves, T z_j, shape (B, K)
    :param probs: The mass of each atom, shape (B, K)
    :param atoms: The support z, evenly spaced and increasing, shape (K,)
    :return: The projected probabilities on the support, shape (B, K)
    """
    spacing = atoms[1] - atoms[0]
    clipped = target_atoms.clamp(atoms[0], atoms[-1])
    closeness = (1.0 - (clipped.unsqueeze(-2) - atoms.unsqueeze(-1)).abs() / spacing).clamp(min=0.0)  # (B, K_i, K_j)
    return (closeness * probs.unsqueeze(-2)).sum(dim=-1)


def mass_outside_support(target_atoms: th.Tensor, probs: th.Tensor, atoms: th.Tensor) -> th.Tensor:
    """
    The share of the shifted distributions' mass that lands outside the support [z_1, z_K], which the projection of
    :func:`categorical_projection` (Bellemare et al. 2017, Eq. (7)) clips onto its end atoms: zero where the support
    covers every return, and the critic's values saturate at the ends where it does not.

    :param target_atoms: Where each atom's mass moves, T z_j, shape (B, K)
    :param probs: The mass of each atom, shape (B, K)
    :param atoms: The support z, increasing, shape (K,)
    :return: Σ_j p_j·[T z_j < z_1 or T z_j > z_K], averaged over the batch, a scalar
    """
    outside = (target_atoms < atoms[0]) | (target_atoms > atoms[-1])
    return (probs * outside).sum(dim=-1).mean()


def categorical_cross_entropy(logits: th.Tensor, target_probs: th.Tensor) -> th.Tensor:
    """
    The loss of a categorical critic (Bellemare et al. 2017, Algorithm 1): the cross-entropy −Σ_i m_i log p_i(s, a)
    of its distribution p = softmax(logits) against the projected target m, averaged over the batch.

    :param logits: The critic's logits at the stored (s, a), shape (B, K)
    :param target_probs: The projected target distributions m, shape (B, K) (no gradient flows into them)
    :return: The mean cross-entropy, a scalar
    """
    return -(target_probs.detach() * th.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def categorical_mean(logits: th.Tensor, atoms: th.Tensor) -> th.Tensor:
    """
    The value of a categorical critic, Q(s, a) = Σ_i softmax(logits)_i · z_i: what the E-step and M-step read.

    :param logits: Logits over the support, shape (..., K)
    :param atoms: The support z, shape (K,)
    :return: The means, shape (...)
    """
    return th.softmax(logits, dim=-1) @ atoms


class _ComponentLogSumExp(th.autograd.Function):
    """
    log Σ_m exp(c_m − ½·s_m²) with s_m = (v − μ_m)·u_m (u_m = 1/σ_m), laid out components first, (M, B, K), so that
    every pass runs over long contiguous rows; the backward pass is written out from the responsibilities
    r_m = softmax_m(c_m − ½·s_m²) (with g the incoming gradient: ∂c_m = Σ_k g·r_m, ∂μ_m = Σ_k g·r_m·s_m·u_m,
    ∂u_m = −Σ_k g·r_m·s_m²/u_m and ∂v = −Σ_m g·r_m·s_m·u_m), which saves most of the passes autograd would make through
    the same operations.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: th.autograd.function.FunctionCtx,
        values: th.Tensor,
        constants: th.Tensor,
        means: th.Tensor,
        inverse_scales: th.Tensor,
    ) -> th.Tensor:
        standardised = (values - means) * inverse_scales  # (M, B, K)
        log_joint = th.addcmul(constants, standardised, standardised, value=-0.5)
        peak = log_joint.amax(dim=0)
        joint = log_joint.sub_(peak).exp_()  # in place: exp(a − max a), at most 1
        total = joint.sum(dim=0)
        ctx.save_for_backward(standardised, joint.div_(total), inverse_scales)  # the responsibilities r
        return peak + total.log()

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: th.autograd.function.FunctionCtx, grad: th.Tensor
    ) -> tuple[th.Tensor | None, th.Tensor, th.Tensor, th.Tensor]:
        standardised, responsibilities, inverse_scales = ctx.saved_tensors  # type: ignore[attr-defined]
        weighted = responsibilities * grad  # g·r
        d_constants = weighted.sum(dim=-1, keepdim=True)
        weighted.mul_(standardised)  # g·r·s
        d_values = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            d_values = -(weighted * inverse_scales).sum(dim=0)
        d_means = weighted.sum(dim=-1, keepdim=True) * inverse_scales
        d_inverse_scales = -weighted.mul_(standardised).sum(dim=-1, keepdim=True) / inverse_scales
        return d_values, d_constants, d_means, d_inverse_scales


def mixture_log_prob(values: th.Tensor, logits: th.Tensor, means: th.Tensor, scales: th.Tensor) -> th.Tensor:
    """
    Log-density of values under one-dimensional Gaussian mixtures, log Σ_m w_m N(v; μ_m, σ_m²) with w = softmax(logits):
    the likelihood of a mixture-of-Gaussians critic (Shahriari et al. 2022, "Revisiting Gaussian mixture critics in
    off-policy reinforcement learning: a sample-based approach", Sec. 3). Computed as log Σ_m exp(c_m − ½·s_m²) with
    c_m = log w_m − log σ_m − ½·log 2π and s_m = (v − μ_m)/σ_m, with a hand-written backward pass.

    :param values: K values per mixture, shape (B, K)
    :param logits: Unnormalised log-weights of the M components, shape (B, M)
    :param means: The components' means, shape (B, M)
    :param scales: The components' standard deviations, shape (B, M)
    :return: log p(v), shape (B, K)
    """
    constants = th.log_softmax(logits, dim=-1) - th.log(scales) - 0.5 * math.log(2 * math.pi)

    def components_first(x: th.Tensor) -> th.Tensor:
        return x.T.unsqueeze(-1)  # (B, M) -> (M, B, 1)

    result = _ComponentLogSumExp.apply(
        values, components_first(constants), components_first(means), components_first(1 / scales)
    )
    return cast(th.Tensor, result)


def mixture_mean(logits: th.Tensor, means: th.Tensor) -> th.Tensor:
    """
    The value of a mixture-of-Gaussians critic, Q(s, a) = Σ_m w_m μ_m with w = softmax(logits).

    :param logits: Unnormalised log-weights, shape (..., M)
    :param means: The components' means, shape (..., M)
    :return: The means of the mixtures, shape (...)
    """
    return (th.softmax(logits, dim=-1) * means).sum(dim=-1)


def sample_mixture(logits: th.Tensor, means: th.Tensor, scales: th.Tensor, sample_shape: tuple[int, ...] = ()) -> th.Tensor:
    """
    Samples of each Gaussian mixture: a component m ~ softmax(logits), then v ~ N(μ_m, σ_m²).

    :param logits: Unnormalised log-weights, shape (..., M)
    :param means: The components' means, shape (..., M)
    :param scales: The components' standard deviations, shape (..., M)
    :param sample_shape: Independent samples of each mixture, as torch.distributions count them
    :return: The samples, shape (*sample_shape, ...)
    """
    component = th.distributions.Categorical(logits=logits).sample(sample_shape).unsqueeze(-1)
    shape = (*sample_shape, *means.shape)
    mean, scale = (x.expand(shape).gather(-1, component).squeeze(-1) for x in (means, scales))
    return mean + scale * th.randn_like(mean)


def mixture_quadrature(logits: th.Tensor, means: th.Tensor, scales: th.Tensor, nodes: int) -> tuple[th.Tensor, th.Tensor]:
    """
    Gauss-Hermite quadrature of Gaussian mixtures: points z and weights ω with Σ_k ω_k·f(z_k) ≈ E_{z~p}[f(z)] for
    p = Σ_m w_m N(μ_m, σ_m²), w = softmax(logits). Each component gets the ``nodes``-point rule, z = μ_m + √2·σ_m·x_j
    with weight w_m·h_j/√π, where (x_j, h_j) is the Gauss-Hermite rule for ∫ e^{−x²} g(x) dx (exact for polynomials
    f up to degree 2·nodes − 1). It replaces the random returns of :func:`sample_mixture` in the critic's
    cross-entropy (Shahriari et al. 2022, Eq. (5)) by a deterministic estimate of the same expectation.

    :param logits: Unnormalised log-weights, shape (..., M)
    :param means: The components' means, shape (..., M)
    :param scales: The components' standard deviations, shape (..., M)
    :param nodes: Points per component
    :return: The points and their weights (which sum to 1 over the last axis), each of shape (..., M·nodes)
    """
    abscissae, weights = (
        th.as_tensor(x, dtype=means.dtype, device=means.device) for x in np.polynomial.hermite.hermgauss(nodes)
    )
    points = means.unsqueeze(-1) + math.sqrt(2.0) * scales.unsqueeze(-1) * abscissae
    point_weights = th.softmax(logits, dim=-1).unsqueeze(-1) * (weights / math.sqrt(math.pi))
    return points.flatten(-2), point_weights.flatten(-2)


def mixture_cross_entropy(
    rewards: th.Tensor,
    dones: th.Tensor,
    discounts: th.Tensor | float,
    next_samples: th.Tensor,
    logits: th.Tensor,
    means: th.Tensor,
    scales: th.Tensor,
    sample_weights: th.Tensor | None = None,
) -> th.Tensor:
    """
    Sample-based loss of a mixture-of-Gaussians critic (Shahriari et al. 2022, Eq. (5)): the target returns are
    y_k = r + (1 − done)·γⁿ·z_k with z_k returns at s' under the target critic's mixtures at the actions sampled from
    π_old (drawn, or the points of :func:`mixture_quadrature`), and the critic minimises −Σ_k ω_k log p(y_k | s, a),
    with ω_k = 1/K for draws.

    :param rewards: (Discounted n-step) rewards, shape (B, 1)
    :param dones: Terminations, shape (B, 1)
    :param discounts: γⁿ per sample, shape (B, 1), or a float
    :param next_samples: Returns z_k at s', shape (B, K)
    :param logits: The critic's mixture at (s, a): log-weights, shape (B, M)
    :param means: The components' means, shape (B, M)
    :param scales: The components' standard deviations, shape (B, M)
    :param sample_weights: The weights ω_k of the returns, summing to 1 per row, shape (B, K); None: equal weights
    :return: The mean over the batch of the (weighted) negative log-likelihood, a scalar
    """
    targets = expected_sarsa_target(rewards, dones, discounts, next_samples).detach()
    log_likelihoods = mixture_log_prob(targets, logits, means, scales)
    if sample_weights is None:
        return -log_likelihoods.mean()
    return -(sample_weights.detach() * log_likelihoods).sum(dim=-1).mean()
