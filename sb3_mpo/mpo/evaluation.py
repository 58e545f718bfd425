"""
Policy evaluation, the critic's half of an MPO update (paper, Sec. 4): the critic's targets from the target networks,
as expected-SARSA n-step returns over transitions or Retrace over trajectory segments, and its regression loss; with
value normalisation, in PopArt's normalised units (:mod:`sb3_mpo.mpo.popart`). The kind is chosen once, from
``q_target``, in :func:`make_evaluation`.
"""

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch as th
from stable_baselines3.common.type_aliases import PyTorchObs, ReplayBufferSamples
from torch import nn
from torch.nn import functional as F

from sb3_mpo.common.buffers import SegmentSamples, map_observations
from sb3_mpo.mpo import losses
from sb3_mpo.mpo.improvement import (
    GaussianImprovement,
    ImprovementBatch,
    SampledImprovementBatch,
    TakenActionValues,
    select_observations,
)
from sb3_mpo.mpo.policies import GaussianActor, SampledCritic, critic_output_layers
from sb3_mpo.mpo.popart import batch_moments, per_step_rewards
from sb3_mpo.mpo.retrace import retrace_targets

if TYPE_CHECKING:
    from sb3_mpo.mpo.mpo import MPO


class PolicyEvaluation(NamedTuple):
    """The critic's loss and the batch on which the policy is then improved."""

    critic_loss: th.Tensor
    q_mean: th.Tensor
    improvement: ImprovementBatch
    #: Further detached diagnostics of the critic's targets, for the logger (a categorical critic's ``mass_outside``)
    diagnostics: dict[str, th.Tensor] | None = None


def _delay(values: th.Tensor) -> th.Tensor:
    """Shift a (B, L) tensor one step later in time: out[:, t] = values[:, t − 1], and out[:, 0] = 0."""
    return F.pad(values[:, :-1], (1, 0))


def _flatten_time(observations: PyTorchObs) -> PyTorchObs:
    """Merge the batch and time axes of segment observations: (B, L, ...) -> (B·L, ...)."""
    return map_observations(lambda obs: obs.flatten(0, 1), observations)


class CriticEvaluation(ABC):
    """
    The critic-target half of an :class:`~sb3_mpo.MPO` model; like its policy improvement, it reads the model's
    networks and hyperparameters, so it always sees their current values (also after ``load``).

    :param model: The MPO model it belongs to
    """

    def __init__(self, model: "MPO"):
        self.model = model

    @abstractmethod
    def evaluate(self, replay_data: Any) -> PolicyEvaluation:
        """
        :param replay_data: A batch of the model's replay buffer
        :return: The critic's loss, its mean value, and the batch (scored by the target networks) to improve on
        """

    def initialise_value_normalizer(self, rewards: th.Tensor) -> None:
        """
        With value normalisation, set its first statistics from the first batch (all workers' batches) with a reward
        other than 0; the critics that trained on unnormalised values before it keep their values.
        """
        normalizer = self.model.value_normalizer
        if normalizer is not None and not bool(normalizer.initialised):
            layers = self.normalised_layers() if self.model._n_updates > 0 else []
            normalizer.initialise(self.moments_over_workers(rewards), self.model.gamma, layers)

    def moments_over_workers(self, values: th.Tensor) -> th.Tensor:
        """The batch's (mean, mean square), averaged over the workers of data-parallel training."""
        moments = batch_moments(values)
        self.model._average_over_workers([moments])
        return moments

    def scored_batch(
        self,
        observations: PyTorchObs,
        actions: th.Tensor,
        next_observations: PyTorchObs,
        following_actions: th.Tensor | None = None,
        valid: th.Tensor | None = None,
    ) -> tuple[th.Tensor | None, ImprovementBatch, TakenActionValues | None]:
        """
        Score the target policy's actions at the next states (and the actions taken there, as Retrace needs) in one
        pass: the target networks' (:meth:`~sb3_mpo.mpo.improvement.PolicyImprovement.target_values`), or, for a critic
        without target network (``batch_renorm``), the critic's, together with the stored pairs
        (:meth:`~sb3_mpo.mpo.improvement.GaussianImprovement.joint_values`).

        :param observations: States of the stored pairs, B
        :param actions: Their stored actions, (B, action_dim)
        :param next_observations: Their next states, B
        :param following_actions: The actions stored at the next states, (B, action_dim), or None
        :param valid: Which pairs are steps of the replay (not padding of a segment), (B,), or None: all
        :return: The critic's outputs at the valid stored pairs with gradient, where this pass computed them (else
            None: the critic scores them once PopArt has moved), the E-step's batch, and the taken actions' values
        """
        model = self.model
        if not model.policy.batch_renorm:
            targets, following = model.improvement.target_values(next_observations, following_actions)
            return None, targets, following
        if valid is not None:  # padding joins no statistics of the normalisation
            observations, actions = select_observations(observations, valid), actions[valid]
        improvement = cast(GaussianImprovement, model.improvement)
        return improvement.joint_values(observations, actions, next_observations, following_actions, valid)

    def discounts(self, replay_data: ReplayBufferSamples) -> th.Tensor | float:
        """γⁿ of each (n-step) transition of the batch, or γ for all where the buffer stores single steps."""
        return replay_data.discounts if replay_data.discounts is not None else self.model.gamma

    def values(self, critic_outputs: th.Tensor) -> th.Tensor:
        """The values Q of the critics' outputs: σ·q̂ + μ with value normalisation, the outputs themselves without."""
        normalizer = self.model.value_normalizer
        return critic_outputs if normalizer is None else normalizer.denormalize(critic_outputs)

    def normalised_layers(self) -> list[nn.Linear]:
        """The layers whose outputs value normalisation rescales: the output layers of the critic and target critic."""
        return [*critic_output_layers(self.model.critic), *critic_output_layers(self.model.critic_target)]

    def normalised_targets(self, target_q_values: th.Tensor, batch: ImprovementBatch) -> tuple[th.Tensor, ImprovementBatch]:
        """
        With value normalisation, move PopArt's statistics towards the critic's targets (rescaling the output layers of
        the critic and of the target critic, whose values are kept) and express the targets, and the target critic's
        values in the batch, in the new normalisation; without it, return them as they are.

        :param target_q_values: The critic's targets Q
        :param batch: The batch of the improvement step, scored by the target critic before the update
        :return: The regression targets of the critic's outputs, and the batch
        """
        normalizer = self.model.value_normalizer
        if normalizer is None or not bool(normalizer.initialised):  # every reward so far 0: unnormalised values
            return target_q_values, batch
        old = normalizer.update(self.moments_over_workers(target_q_values), self.normalised_layers())
        batch = batch._replace(q_values=normalizer.renormalize(batch.q_values, old))
        return normalizer.normalize(target_q_values), batch


class NStepEvaluation(CriticEvaluation):
    """Expected-SARSA critic loss over (n-step) transitions (paper, Sec. 4, Eq. (13) with the traces cut)."""

    def evaluate(self, replay_data: ReplayBufferSamples) -> PolicyEvaluation:
        model = self.model
        self.initialise_value_normalizer(per_step_rewards(replay_data.rewards, replay_data.discounts, model.gamma))
        current_q_values, targets, _ = self.scored_batch(
            replay_data.observations, replay_data.actions, replay_data.next_observations
        )
        target_q_values = losses.expected_sarsa_target(
            replay_data.rewards,
            replay_data.dones,
            self.discounts(replay_data),
            self.values(targets.expected_q()).unsqueeze(-1),
        )
        target_q_values, targets = self.normalised_targets(target_q_values, targets)
        if current_q_values is None:
            current_q_values = model.improvement.taken_q_values(model.critic, replay_data.observations, replay_data.actions)
        critic_loss = losses.critic_regression_loss(current_q_values, target_q_values)
        return PolicyEvaluation(critic_loss, self.values(current_q_values.detach().mean()), targets)


class DistributionalNStepEvaluation(CriticEvaluation):
    """
    Distributional expected-SARSA critic loss over (n-step) transitions, for a distributional critic of a Gaussian
    policy: the targets are the critic's distributions of returns at the N actions sampled from π_old at s', shifted to
    r + γⁿ·z; those of the target critic, or, for a critic without target network (``batch_renorm``), the critic's own,
    scored without gradient in one batch with the stored pairs. The E-step and M-step read the critics' means.
    """

    def evaluate(self, replay_data: ReplayBufferSamples) -> PolicyEvaluation:
        model = self.model
        critic = cast(SampledCritic, model.critic)
        outputs, targets, _ = self.scored_batch(replay_data.observations, replay_data.actions, replay_data.next_observations)
        assert isinstance(targets, SampledImprovementBatch)
        if outputs is None:
            outputs = critic(replay_data.observations, cast(GaussianActor, model.actor).squash(replay_data.actions))[0]
        critic_loss, diagnostics = self.loss(replay_data, outputs, targets)
        return PolicyEvaluation(critic_loss, critic.values(outputs.detach()).mean(), targets, diagnostics)

    @abstractmethod
    def loss(
        self, replay_data: ReplayBufferSamples, outputs: th.Tensor, targets: SampledImprovementBatch
    ) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        """
        :param replay_data: The batch of transitions
        :param outputs: The critic's outputs at the stored pairs, (B, out_features), with gradient
        :param targets: The E-step's batch, with the distributions of returns at the next states
        :return: The critic's loss, and detached diagnostics of its targets
        """


class CategoricalNStepEvaluation(DistributionalNStepEvaluation):
    """
    :class:`DistributionalNStepEvaluation` for a categorical critic (Bellemare et al. 2017, as in DeepMind's MPO with a
    categorical critic): the target distribution is the mixture over the N sampled actions, shifted and projected onto
    the support; the critic minimises its cross-entropy.
    """

    def loss(
        self, replay_data: ReplayBufferSamples, outputs: th.Tensor, targets: SampledImprovementBatch
    ) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        atoms = cast(SampledCritic, self.model.critic).atoms
        assert atoms is not None and targets.value_probs is not None, "a categorical critic has a support"
        with th.no_grad():
            target_atoms = losses.expected_sarsa_target(
                replay_data.rewards, replay_data.dones, self.discounts(replay_data), atoms
            )
            target_probs = losses.categorical_projection(target_atoms, targets.value_probs, atoms)
            mass_outside = losses.mass_outside_support(target_atoms, targets.value_probs, atoms)
        return losses.categorical_cross_entropy(outputs, target_probs), {"mass_outside": mass_outside}


class MixtureNStepEvaluation(DistributionalNStepEvaluation):
    """
    :class:`DistributionalNStepEvaluation` for a mixture-of-Gaussians critic (Shahriari et al. 2022, Acme's default MPO
    critic): Z returns (``mixture_return_samples``) are drawn from the (target) critic's mixture at each of the N sampled
    actions, or with ``mixture_quadrature_nodes`` the points of a Gauss-Hermite rule stand in for the draws, and the
    critic maximises the (weighted) likelihood of their shifted values r + γⁿ·z under its mixture at (s, a).
    """

    def loss(
        self, replay_data: ReplayBufferSamples, outputs: th.Tensor, targets: SampledImprovementBatch
    ) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        assert targets.value_samples is not None, "a mixture critic's batch has return samples"
        critic = cast(SampledCritic, self.model.critic)
        discounts = self.discounts(replay_data)
        loss = losses.mixture_cross_entropy(
            replay_data.rewards,
            replay_data.dones,
            discounts,
            targets.value_samples,
            *critic.mixture(outputs),
            sample_weights=targets.value_weights,
        )
        return loss, {}


class RetraceEvaluation(CriticEvaluation):
    """
    Retrace critic loss over trajectory segments (paper, Sec. 4, Eq. (13)). Every valid step of a segment is a
    regression target; the E-step and M-step run at the valid steps' next states.
    """

    def evaluate(self, segments: SegmentSamples) -> PolicyEvaluation:
        """
        :param segments: A batch of trajectory segments (:class:`~sb3_mpo.common.buffers.SegmentSamples`)
        :return: The Retrace critic loss over their valid steps, and the improvement batch at their next states
        """
        model = self.model
        n_segments, length = segments.rewards.shape
        observations = _flatten_time(segments.observations)
        next_observations = _flatten_time(segments.next_observations)
        actions = segments.actions.reshape(n_segments * length, -1)
        # Where step t + 1 is valid, s_{t+1} is both the next observation of step t and the observation of step t + 1,
        # so the one forward of the target networks at the next observations also scores a_{t+1} (Q'(s_{t+1}, a_{t+1})
        # and log π_old(a_{t+1}|s_{t+1})). Retrace reads neither at t = 0, nor at invalid steps.
        following_actions = th.cat([segments.actions[:, 1:], segments.actions[:, -1:]], dim=1).flatten(0, 1)
        valid = segments.valid.reshape(-1) > 0.5
        self.initialise_value_normalizer(segments.rewards.reshape(-1)[valid])
        current_q_values, targets, following = self.scored_batch(
            observations, actions, next_observations, following_actions, valid
        )
        assert following is not None
        with th.no_grad():
            target_q_values = retrace_targets(
                q_values=_delay(self.values(following.q_values).reshape(n_segments, length)),
                expected_next_q=self.values(targets.expected_q()).reshape(n_segments, length),
                rewards=segments.rewards,
                terminations=segments.terminations,
                episode_ends=segments.episode_ends,
                valid=segments.valid,
                log_ratios=_delay(following.log_probs.reshape(n_segments, length)) - segments.behaviour_log_probs,
                gamma=model.gamma,
                lambda_=model.retrace_lambda,
            )
        target_q_values, targets = self.normalised_targets(target_q_values.reshape(-1)[valid], targets)
        if current_q_values is None:
            current_q_values = model.improvement.taken_q_values(model.critic, observations, actions)[valid]
        critic_loss = losses.critic_regression_loss(current_q_values, target_q_values.unsqueeze(-1))
        return PolicyEvaluation(critic_loss, self.values(current_q_values.detach().mean()), targets.select(valid))


def make_evaluation(model: "MPO") -> CriticEvaluation:
    """
    :return: The critic evaluation of the model's ``q_target`` (Retrace over segments, or n-step returns) and critic
        (of expected values, categorical, or a Gaussian mixture)
    """
    if model.q_target == "retrace":
        return RetraceEvaluation(model)
    distribution = model.critic.distribution if isinstance(model.critic, SampledCritic) else "expected"
    evaluations = {"categorical": CategoricalNStepEvaluation, "mixture": MixtureNStepEvaluation}
    return evaluations.get(distribution, NStepEvaluation)(model)
