"""
What training reports instead of failing silently: each check is a pure function of numbers the update already has,
and returns the warning's text, or ``None`` when all is well. :class:`~sb3_mpo.mpo.mpo.MPO` calls them from ``train``
and warns once per kind.
"""

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


def collapsed_exploration(std_mean: float, min_std: float, factor: float, env_step: int) -> str | None:
    """
    A Gaussian policy whose standard deviation sits at its floor explores no more, and the M-step's gradient on it
    vanishes through the softplus, so it may never rise again.

    :param std_mean: The policy's standard deviation, averaged over the last batches' states and action dimensions
    :param min_std: Its floor
    :param factor: How close to the floor counts as collapsed
    :param env_step: Where training is, for the message
    :return: The warning, or None
    """
    if std_mean > factor * min_std:
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
