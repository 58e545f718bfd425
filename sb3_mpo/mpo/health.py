"""
What training reports instead of failing silently: each check is a pure function of numbers the update already has,
and returns the warning's text, or ``None`` when all is well. :class:`~sb3_mpo.mpo.mpo.MPO` calls them from ``train``
and warns once per kind.
"""

from collections import defaultdict

import numpy as np


def return_scale(rewards: np.ndarray, gamma: float) -> float:
    """
    :param rewards: Rewards as the critic sees them (after VecNormalize)
    :param gamma: The discount factor, below 1
    :return: ``mean |r| / (1 - γ)``, the size of a typical discounted return
    """
    return float(np.abs(rewards).mean()) / (1.0 - gamma)


def return_bound(rewards: np.ndarray, gamma: float) -> float:
    """
    :param rewards: Rewards as the critic sees them (after VecNormalize)
    :param gamma: The discount factor, below 1
    :return: ``max |r| / (1 - γ)``, which no discounted return of these rewards can exceed in size
    """
    return float(np.abs(rewards).max()) / (1.0 - gamma)


def large_returns(rewards: np.ndarray, gamma: float, limit: float) -> str | None:
    """
    Returns too large for a critic that starts near 0: the solved temperature keeps the E-step right at any scale, but
    the critic moves its outputs by small Adam steps and may never reach such values.

    :param rewards: The rewards collected before the first update, as the critic sees them
    :param gamma: The discount factor, below 1
    :param limit: The largest :func:`return_scale` accepted silently
    :return: The warning, or None
    """
    scale = return_scale(rewards, gamma)
    if scale <= limit:
        return None
    return (
        f"MPO: the rewards collected so far average |r| = {scale * (1.0 - gamma):.3g}, so returns reach about "
        f"|r| / (1 - gamma) = {scale:.3g}, above {limit:.0e}. The critic starts near 0 and its Adam steps move its "
        "outputs slowly, so it may never catch up with returns of this size (Pendulum-v1 with rewards x1e4 did not learn "
        "in 20k steps; docs/results/reward_scale.md). Pass value_normalization=True (PopArt) or normalise the rewards "
        "(VecNormalize(norm_reward=True))."
    )


def collapsed_exploration(std_mean: float, min_std: float, init_std: float, factor: float, env_step: int) -> str | None:
    """
    A Gaussian policy whose standard deviation sits at its floor explores no more, and the M-step's gradient on it
    vanishes through the softplus, so it may never rise again.

    :param std_mean: The policy's standard deviation, averaged over the last batches' states and action dimensions
    :param min_std: Its floor
    :param init_std: Where it started
    :param factor: How close to the floor counts as collapsed: within ``factor`` times the floor, and below halfway
        from ``init_std`` down to it (a floor set close below ``init_std`` is not a collapse at the start)
    :param env_step: Where training is, for the message
    :return: The warning, or None
    """
    if std_mean > min(factor * min_std, (min_std + init_std) / 2):
        return None
    return (
        f"MPO: the policy's standard deviation has collapsed to its floor (mean {std_mean:.3g} over the last batches, "
        f"min_std={min_std:.3g}) at env step {env_step}: it no longer explores. Raise policy_kwargs min_std, or slow the "
        "covariance's shrinking with a smaller epsilon_std."
    )


def diverged_critic(q_mean: float, rewards: np.ndarray, gamma: float, factor: float, env_step: int) -> str | None:
    """
    A critic whose mean value lies beyond any return the rewards allow has diverged (MPO's critic, by default one network
    without the clipped double-Q of SAC and TD3, can overestimate), and the E-step then ranks actions by noise.

    :param q_mean: The critic's mean Q-value over the last batches
    :param rewards: The rewards in replay, as the critic sees them
    :param gamma: The discount factor, below 1
    :param factor: How far beyond :func:`return_bound` counts as diverged
    :param env_step: Where training is, for the message
    :return: The warning, or None
    """
    bound = return_bound(rewards, gamma)
    if bound == 0.0 or abs(q_mean) <= factor * bound:  # all rewards zero so far (sparse tasks): nothing to compare with
        return None
    return (
        f"MPO: the critic has diverged: its mean Q-value {q_mean:.3g} at env step {env_step} lies beyond "
        f"{factor:g} x max|r| / (1 - gamma) = {factor * bound:.3g}, larger than any return of the rewards in replay. "
        "Lower learning_rate, set max_grad_norm, or normalise the rewards (VecNormalize) or the values "
        "(value_normalization=True)."
    )


def returns_outside_support(
    mass_outside: float, support: tuple[float, float], limit: float, env_step: int, rewards: np.ndarray | None, gamma: float
) -> str | None:
    """
    A categorical critic whose support does not cover the task's returns: the projection clips the targets onto its end
    atoms, so its values saturate there and the E-step can no longer rank the actions whose returns lie beyond.

    :param mass_outside: The share of the critic's target mass that fell outside the support over the last updates
        (:func:`~sb3_mpo.mpo.losses.mass_outside_support`)
    :param support: The critic's (v_min, v_max)
    :param limit: The largest share accepted silently
    :param env_step: Where training is, for the message
    :param rewards: The rewards in replay, as the critic sees them, to say how far the returns reach (None: not said)
    :param gamma: The discount factor, below 1
    :return: The warning, or None
    """
    if mass_outside <= limit:
        return None
    reach = "" if rewards is None else f" (returns of the rewards in replay reach ±{return_bound(rewards, gamma):.3g})"
    return (
        f"MPO: {mass_outside:.1%} of the categorical critic's target mass fell outside critic_support={support!r} over the "
        f"last updates at env step {env_step}, and the projection moved it onto the support's ends: the critic's values "
        f"saturate there. Widen critic_support to cover the returns{reach}, or normalise the rewards (VecNormalize)."
    )


class ConstraintWindow:
    """
    The KL constraints of each ``train()`` call since the last check, which MPO judges every ``health_check_interval``
    updates: their mean over the window's updates, the median of the calls' means (where a multiplier holds its bound
    most of the time) and the largest (a few updates that left a trust region, which the mean confuses with a
    multiplier that never holds it: on HalfCheetah-v5 one excursion of 20 updates raised ``epsilon_std``'s mean over
    1000 updates to 305x its bound, its median staying 1.5x).

    :param start: The model's update count where the window begins (0: its first update)
    """

    def __init__(self, start: int) -> None:
        self.start = start
        self.values: dict[str, list[float]] = defaultdict(list)
        self.gradient_steps: list[int] = []
        self.updates: list[int] = []  # the model's update count after each call
        self.env_steps: list[int] = []

    def add(self, means: dict[str, float], gradient_steps: int, update: int, env_step: int) -> None:
        """
        :param means: One call's diagnostics, averaged over its gradient steps: the constraints to judge
        :param gradient_steps: How many gradient steps that call took
        :param update: The model's update count after it
        :param env_step: The model's env step count there
        """
        if gradient_steps == 0:  # nothing was measured
            return
        for key, value in means.items():
            self.values[key].append(value)
        self.gradient_steps.append(gradient_steps)
        self.updates.append(update)
        self.env_steps.append(env_step)

    @property
    def n_updates(self) -> int:
        """How many updates the window holds"""
        return sum(self.gradient_steps)

    def mean(self, key: str) -> float:
        """:return: ``key`` averaged over the window's updates"""
        return float(np.average(self.values[key], weights=self.gradient_steps))

    def median(self, key: str) -> float:
        """:return: The median of the calls' means of ``key`` (with one gradient step per call: of its updates)"""
        return float(np.median(self.values[key]))

    def peak(self, key: str) -> int:
        """:return: Which call had the largest mean of ``key`` (an index into the window's lists)"""
        return int(np.argmax(self.values[key]))


def _trust_region(parameter: str, bound: float, per_dimension: bool) -> str:
    """:return: What a message calls an M-step trust region: its KL (its largest action dimension's) and its bound"""
    which = " of the action dimension furthest out" if per_dimension else ""
    return f"the M-step's KL(pi_old || pi){which} bounded by {parameter}={bound:.3g}"


def loose_trust_region(
    kl: float, parameter: str, bound: float, factor: float, updates: int, env_step: int, per_dimension: bool = False
) -> str | None:
    """
    An M-step trust region that its Lagrange multiplier does not hold (paper, Sec. 3.3, Eq. (12)): the multiplier α
    rises by ``dual_learning_rate`` steps while the KL exceeds its bound, and a policy whose steps outrun it leaves the
    trust region for good, which the bound was there to prevent.

    :param kl: The M-step's KL(π_old || π) of one trust region: its median over the last updates (over ``train()``
        calls, :meth:`ConstraintWindow.median`), so that a few updates far outside (:func:`trust_region_excursion`) do
        not count as a multiplier that never holds it
    :param parameter: The hyperparameter that bounds it (``epsilon_mean``, ``epsilon_std``, ``epsilon_policy``)
    :param bound: Its value
    :param factor: How far above the bound counts as not held
    :param updates: Over how many updates ``kl`` was taken, for the message
    :param env_step: Where training is, for the message
    :param per_dimension: Whether ``kl`` is the largest of one trust region per action dimension
        (``per_dim_constraints``), for the message
    :return: The warning, or None
    """
    if kl <= factor * bound:
        return None
    return (
        f"MPO: {_trust_region(parameter, bound, per_dimension)} had a median of {kl:.3g} over the last "
        f"{updates} updates at env step {env_step}, {kl / bound:.3g} times its bound: its Lagrange multiplier does not "
        "hold the policy in the trust region. Raise dual_learning_rate, so that the multiplier follows faster, or lower "
        "actor_learning_rate, so that the actor's steps are smaller."
    )


def trust_region_excursion(
    peak: float,
    median: float,
    parameter: str,
    bound: float,
    factor: float,
    update: int,
    env_step: int,
    actor_grad_norm: float,
    per_dimension: bool = False,
) -> str | None:
    """
    A policy that left an M-step trust region by far for a few updates, where its multiplier holds it otherwise
    (paper, Sec. 3.3, Eq. (12)): the actor's optimiser overshot the penalty α KL, whose gradient grows with α, and
    the overshoot fed itself until the penalty pulled the policy back. Measured with the MuJoCo entry (learning rate
    1e-3, Adam's beta1 0.5) on HalfCheetah-v5 seed 2: over 6 updates the actor's gradient norm rose from 4 to 7654
    and ``epsilon_std``'s KL (the mean over the six action dimensions) to 1.7, 169162x its bound (the standard
    deviation went from 0.50 to 0.90), back under 30x within 20 updates. Probes of seeds 0 and 2 (9000 steps each)
    with the actor's Adam at beta2 0.99 (``actor_optimizer_kwargs``) still had one excursion per seed, peaking at
    2123x and 3511x the bound instead of 110956x and 169162x.

    :param peak: The largest KL(π_old || π) of one ``train()`` call over the last updates (the mean of its gradient
        steps: a call of many steps dilutes one step's)
    :param median: The KL's median over those updates, for the message
    :param parameter: The hyperparameter that bounds it (``epsilon_mean``, ``epsilon_std``, ``epsilon_policy``)
    :param bound: Its value
    :param factor: How far above the bound one call's KL counts as an excursion
    :param update: The model's update count after that call, for the message
    :param env_step: The env step there, for the message
    :param actor_grad_norm: The actor's gradient norm (before clipping) in that call, for the message
    :param per_dimension: Whether ``peak`` is the largest of one trust region per action dimension, for the message
    :return: The warning, or None
    """
    if peak <= factor * bound:
        return None
    return (
        f"MPO: {_trust_region(parameter, bound, per_dimension)} reached {peak:.3g} at update {update} "
        f"(env step {env_step}), {peak / bound:.3g} times its bound (the actor's gradient norm {actor_grad_norm:.3g} "
        f"before clipping), where its median over the last updates was {median:.3g}: the policy's update overshot "
        "the trust region for a few steps. Each such excursion moves the policy further than the trust region allows; "
        "a lower actor_learning_rate makes the actor's steps smaller (the critic keeps learning_rate) and, with Adam, a "
        "second moment that it forgets sooner (policy_kwargs actor_optimizer_kwargs=dict(betas=(beta1, 0.99))) shrinks "
        "them sooner once the gradient grows."
    )


def e_step_off_bound(
    kl: float, epsilon: float, factor: float, updates: int, env_step: int, solved: bool, greedy_kl: float | None = None
) -> str | None:
    """
    An E-step whose KL(q || π_old) misses its bound ε (paper, Sec. 3.2, Eq. (7)): above it the temperature is too low
    and the E-step close to greedy; below it the E-step barely re-weights the sampled actions. A temperature solved on
    each batch meets the bound unless the critic's values of the actions at each state are (numerically) tied, so that
    no temperature re-weights them, or its Newton steps fall short; a learned temperature misses it while its dual's
    gradient lags.

    :param kl: The E-step's KL(q || π_old), averaged over the last updates
    :param epsilon: Its bound
    :param factor: How far above or below the bound counts as missed
    :param updates: Over how many updates ``kl`` was averaged, for the message
    :param env_step: Where training is, for the message
    :param solved: Whether the temperature is solved on each batch (``temperature_update="solve"``)
    :param greedy_kl: The largest KL the E-step can reach, a greedy q's, averaged like ``kl``, where it can be below ε
        (a confident Discrete policy, :func:`~sb3_mpo.mpo.losses.greedy_e_step_kl`): the KL is then judged against it;
        None where it is above ε (log N over N samples of π_old: ε ≥ log N is refused)
    :return: The warning, or None
    """
    reachable = epsilon if greedy_kl is None else min(epsilon, greedy_kl)
    if reachable / factor <= kl <= factor * epsilon:
        return None
    measured = (
        f"MPO: the E-step's KL(q || pi_old) averaged {kl:.3g} over the last {updates} updates at env step {env_step}, "
        f"against its bound epsilon={epsilon:.3g}"
        + ("" if reachable == epsilon else f" (at most {reachable:.3g}, a greedy E-step's)")
        + ": "
    )
    if solved and kl < epsilon:
        return measured + (
            "the critic's values of the actions sampled at each state barely differ (float32 resolves about 1e-7 of "
            "their size), so no temperature re-weights them and the policy does not improve. Check that the critic "
            "learns (train/critic_loss), and normalise large returns (VecNormalize(norm_reward=True) or "
            "value_normalization=True)."
        )
    if solved:
        return (
            measured + "the temperature's Newton steps do not reach the bound on each batch: raise MPO.temperature_iterations."
        )
    side = "too low: the E-step is close to greedy" if kl > epsilon else "too high: the E-step barely re-weights the actions"
    return measured + (
        f"the temperature learned by its dual's gradient is {side}. Pass temperature_update='solve', which meets the "
        "bound on every batch, or raise dual_learning_rate."
    )
