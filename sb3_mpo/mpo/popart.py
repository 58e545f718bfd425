"""
Value normalisation for MPO's critic: PopArt (van Hasselt et al. 2016, "Learning values across many orders of
magnitude", NeurIPS, Sec. 2 and Algorithm 1).

The critic learns normalised values q̂ and the values are Q = σ·q̂ + μ, where μ and σ track the mean and the standard
deviation of the critic's targets ("ART": adaptively rescaling targets). Whenever μ and σ move, the critic's output
layer is rescaled so that every Q it outputs is unchanged ("Pop": preserving outputs precisely). With MPO's E-step
temperature solved per batch (a softmax of Q/η whose η meets the KL bound is unchanged by any affine map of Q) the
whole update then no longer depends on the scale of the rewards.
"""

from collections.abc import Sequence

import torch as th
from torch import nn

#: Smallest standard deviation, relative to the root mean square of the targets (and never below 1e-12)
RELATIVE_STD_FLOOR = 1e-6


def moments_std(mean: th.Tensor, mean_square: th.Tensor) -> th.Tensor:
    """
    :param mean: First moment ν₁ of the targets
    :param mean_square: Second moment ν₂
    :return: σ = sqrt(ν₂ − ν₁²), floored at ``RELATIVE_STD_FLOOR``·sqrt(ν₂) (and 1e-12) so that it never vanishes
    """
    floor = th.clamp(RELATIVE_STD_FLOOR * mean_square.sqrt(), min=1e-12)
    return th.maximum((mean_square - mean**2).clamp(min=0.0).sqrt(), floor)


def batch_moments(values: th.Tensor) -> th.Tensor:
    """
    :param values: A batch of values (any shape)
    :return: Their first two moments (mean(y), mean(y²)) in float64, shape (2,): what data-parallel workers average
    """
    values = values.double()
    return th.stack([values.mean(), (values**2).mean()])


def per_step_rewards(rewards: th.Tensor, discounts: th.Tensor | None, gamma: float) -> th.Tensor:
    """
    The constant reward per step that earns each n-step return: R / (1 + γ + ... + γ^(k−1)) = R·(1 − γ) / (1 − γᵏ) for
    a return R over k steps, whose discount γᵏ the batch holds (SB3's n-step buffer; fewer steps where the episode
    ended), so that PopArt's first statistics (:meth:`PopArt.initialise`, which scales rewards per step by the horizon
    1 / (1 − γ)) are those of the returns, whatever n.

    :param rewards: The batch's (discounted, n-step) returns R, shape (B, 1)
    :param discounts: Their discounts γᵏ, shape (B, 1), or None for one-step rewards
    :param gamma: The discount factor γ
    :return: The per-step rewards, shape (B, 1): ``rewards`` itself for one-step rewards or γ = 1 (k is then unknown)
    """
    if discounts is None or gamma >= 1:
        return rewards
    # k >= 1: 1 − γᵏ >= 1 − γ, which also keeps a γᵏ rounded to 1 in float32 from dividing by 0
    return rewards * (1.0 - gamma) / (1.0 - discounts).clamp_min(1.0 - gamma)


def updated_moments(mean: th.Tensor, mean_square: th.Tensor, moments: th.Tensor, rate: float) -> tuple[th.Tensor, th.Tensor]:
    """
    One step of the exponential moving averages of the targets' moments (PopArt, Sec. 2, Eq. (2) with step size β).

    :param mean: ν₁
    :param mean_square: ν₂
    :param moments: The batch's (mean(y), mean(y²)), see :func:`batch_moments`
    :param rate: β in (0, 1]
    :return: (1 − β)·ν₁ + β·mean(y), (1 − β)·ν₂ + β·mean(y²)
    """
    return (1 - rate) * mean + rate * moments[0], (1 - rate) * mean_square + rate * moments[1]


def preserving_output_layer(
    weight: th.Tensor, bias: th.Tensor, old: tuple[th.Tensor, th.Tensor], new: tuple[th.Tensor, th.Tensor]
) -> tuple[th.Tensor, th.Tensor]:
    """
    The output layer that gives the same values under the new statistics (PopArt, Algorithm 1):
    W' = (σ / σ')·W and b' = (σ·b + μ − μ') / σ', so that σ'·(W'h + b') + μ' = σ·(Wh + b) + μ for every h.

    :param weight: W, shape (outputs, inputs)
    :param bias: b, shape (outputs,)
    :param old: (μ, σ)
    :param new: (μ', σ')
    :return: W', b'
    """
    (old_mean, old_std), (new_mean, new_std) = old, new
    ratio = (old_std / new_std).to(weight.dtype)
    return weight * ratio, ((old_std * bias.double() + old_mean - new_mean) / new_std).to(bias.dtype)


class PopArt(nn.Module):
    """
    The statistics (μ, σ) of the critic's targets, in float64, and the output-preserving update of the critic's output
    layers. Before the first update they are set from the first batch's rewards, (mean r, rms r) / (1 − γ), a guess
    that scales with the rewards, so that training is the same at any reward scale from the first update on. The root
    mean square (not the standard deviation) keeps σ at the size of the returns where every reward is the same, e.g.
    −1 per step. While every reward seen is 0 (a sparse task before its first success) there is no scale to set: the
    critic learns unnormalised values, (μ, σ) = (0, 1), until the first batch with a reward sets them.

    :param rate: Step size β of the moments' moving averages
    """

    mean: th.Tensor
    mean_square: th.Tensor
    initialised: th.Tensor

    def __init__(self, rate: float = 3e-4) -> None:
        super().__init__()
        self.rate = rate
        self.register_buffer("mean", th.zeros((), dtype=th.float64))
        self.register_buffer("mean_square", th.ones((), dtype=th.float64))
        self.register_buffer("initialised", th.zeros((), dtype=th.bool))

    def statistics(self) -> tuple[th.Tensor, th.Tensor]:
        """:return: (μ, σ)"""
        return self.mean.clone(), moments_std(self.mean, self.mean_square)

    def normalize(self, values: th.Tensor) -> th.Tensor:
        """:return: (Q − μ) / σ, in the dtype of ``values``"""
        mean, std = self.statistics()
        return ((values.double() - mean) / std).to(values.dtype)

    def denormalize(self, normalized: th.Tensor) -> th.Tensor:
        """:return: σ·q̂ + μ, in the dtype of ``normalized``"""
        mean, std = self.statistics()
        return (normalized.double() * std + mean).to(normalized.dtype)

    @th.no_grad()
    def initialise(self, reward_moments: th.Tensor, gamma: float, output_layers: Sequence[nn.Linear] = ()) -> None:
        """
        Set (μ, σ) from a batch of rewards per step (an n-step target's returns through :func:`per_step_rewards`),
        unless already set or every reward is 0: (mean r, rms r) / (1 − γ), i.e.
        ν₁ = mean(r) / (1 − γ) and ν₂ = (mean(r)² + mean(r²)) / (1 − γ)².

        :param reward_moments: The batch's (mean(r), mean(r²)), see :func:`batch_moments`
        :param gamma: The discount factor γ
        :param output_layers: Output layers to rescale so that their values are kept: those of critics that trained on
            unnormalised values while every reward was 0 (none at the first update, so that the normalised critic
            starts alike at every reward scale)
        """
        if bool(self.initialised) or not bool(reward_moments[1] > 0):
            return
        horizon = 1.0 / (1.0 - gamma) if gamma < 1 else 1.0
        old = self.statistics()
        self.mean.copy_(reward_moments[0] * horizon)
        self.mean_square.copy_((reward_moments[0] ** 2 + reward_moments[1]) * horizon**2)
        self.initialised.fill_(True)
        self.preserve_outputs(output_layers, old)

    def preserve_outputs(self, output_layers: Sequence[nn.Linear], old: tuple[th.Tensor, th.Tensor]) -> None:
        """Rescale ``output_layers`` so that their values under the current statistics are those under ``old``."""
        new = self.statistics()
        for layer in output_layers:
            weight, bias = preserving_output_layer(layer.weight, layer.bias, old, new)
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)

    @th.no_grad()
    def update(self, target_moments: th.Tensor, output_layers: Sequence[nn.Linear]) -> tuple[th.Tensor, th.Tensor]:
        """
        Move the statistics towards a batch of targets and rescale the output layers so that their values are kept.

        :param target_moments: The (mean(y), mean(y²)) of the critic's unnormalised targets, see :func:`batch_moments`
        :param output_layers: The last linear layers of the online and of the target critic
        :return: The previous statistics (μ, σ)
        """
        old = self.statistics()
        mean, mean_square = updated_moments(self.mean, self.mean_square, target_moments, self.rate)
        self.mean.copy_(mean)
        self.mean_square.copy_(mean_square)
        self.preserve_outputs(output_layers, old)
        return old

    def renormalize(self, normalized: th.Tensor, old: tuple[th.Tensor, th.Tensor]) -> th.Tensor:
        """Values normalised with the statistics ``old``, normalised with the current ones instead."""
        (old_mean, old_std), (mean, std) = old, self.statistics()
        return ((normalized.double() * old_std + old_mean - mean) / std).to(normalized.dtype)
