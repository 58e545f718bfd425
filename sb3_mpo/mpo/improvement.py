"""
The half of MPO that depends on the action space, chosen once when the model is built (as Acme picks its loss once):
how the behaviour policy acts and what it records, how the target networks score actions, and the E-step and M-step.
A ``Box`` space gets :class:`GaussianImprovement` (N sampled actions per state, decoupled mean / covariance trust
regions, optional action penalty); a ``Discrete`` one gets :class:`CategoricalImprovement` (every action enumerated,
one trust region). The maths itself lives in :mod:`sb3_mpo.mpo.losses`.
"""

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, NamedTuple, cast

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.dqn.policies import QNetwork
from torch import nn

from sb3_mpo.common.buffers import map_observations
from sb3_mpo.mpo import losses
from sb3_mpo.mpo.policies import CategoricalActor, GaussianActor, SampledCritic

if TYPE_CHECKING:
    from sb3_mpo.mpo.mpo import MPO

#: The policy loss, the loss of the temperatures and multipliers, and detached diagnostics for the logger
ImprovementLosses = tuple[th.Tensor, th.Tensor, dict[str, th.Tensor]]


#: The diagnostic of the largest KL an E-step can reach (where it can fall below ε: the exact discrete E-step)
GREEDY_KL = "kl_q_greedy"


def select_observations(observations: PyTorchObs, mask: th.Tensor) -> PyTorchObs:
    """Keep the states of an observation batch where ``mask`` (shape (B,)) is true."""
    return map_observations(lambda obs: obs[mask], observations)


class SampledImprovementBatch(NamedTuple):
    """What the E-step and M-step need for a Gaussian policy: B states, N target-policy samples per state."""

    observations: PyTorchObs
    actions: th.Tensor  # (N, B, A), Gaussian space
    q_values: th.Tensor  # (N, B), target critic
    mean_old: th.Tensor  # (B, A)
    std_old: th.Tensor  # (B, A)
    #: With a categorical critic: the target critic's (with ``batch_renorm``, the critic's) distribution of returns under
    #: π_old, the mixture of the N samples' distributions, shape (B, n_atoms); None otherwise
    value_probs: th.Tensor | None = None
    #: With a mixture critic: Z returns (``mixture_return_samples``) drawn from the target critic's (with
    #: ``batch_renorm``, the critic's) mixture at each of the N samples, shape (B, N·Z), or with
    #: ``mixture_quadrature_nodes`` K the quadrature's points of each of the M components there, shape (B, N·M·K);
    #: None otherwise
    value_samples: th.Tensor | None = None
    #: With the quadrature: the weight of each point of ``value_samples`` (summing to 1 per state); None otherwise
    value_weights: th.Tensor | None = None

    def expected_q(self) -> th.Tensor:
        """Monte-Carlo estimate of E_{π_old}[Q'(s, ·)] from the N samples, shape (B,)."""
        return self.q_values.mean(dim=0)

    def select(self, mask: th.Tensor) -> "SampledImprovementBatch":
        """Keep the states where ``mask`` (shape (B,)) is true."""
        return SampledImprovementBatch(
            select_observations(self.observations, mask),
            self.actions[:, mask],
            self.q_values[:, mask],
            self.mean_old[mask],
            self.std_old[mask],
            *(
                None if values is None else values[mask]
                for values in (self.value_probs, self.value_samples, self.value_weights)
            ),
        )


class CategoricalImprovementBatch(NamedTuple):
    """What the E-step and M-step need for a categorical policy: B states and every action's Q' and π_old."""

    observations: PyTorchObs
    q_values: th.Tensor  # (B, n_actions), target critic
    log_probs_old: th.Tensor  # (B, n_actions)

    def expected_q(self) -> th.Tensor:
        """Exact E_{π_old}[Q'(s, ·)] over the action set, shape (B,)."""
        return losses.categorical_expectation(self.q_values, self.log_probs_old)

    def select(self, mask: th.Tensor) -> "CategoricalImprovementBatch":
        """Keep the states where ``mask`` (shape (B,)) is true."""
        return CategoricalImprovementBatch(
            select_observations(self.observations, mask), self.q_values[mask], self.log_probs_old[mask]
        )


ImprovementBatch = SampledImprovementBatch | CategoricalImprovementBatch


class TakenActionValues(NamedTuple):
    """The target networks' view of stored actions: Q'(s, a) and log π_old(a|s), each of shape (B,)."""

    q_values: th.Tensor
    log_probs: th.Tensor


class LagrangeMultipliers(nn.Module):
    """
    The dual variables of MPO, stored unconstrained and mapped through :func:`~sb3_mpo.mpo.losses.positive`:
    the temperatures of the E-steps (η of the return and, with action penalisation, the penalty's) and the M-step
    multipliers α of the trust regions (for a Gaussian policy α_μ and α_Σ, one per action dimension or one in all;
    for a categorical policy a single α).

    :param init_temperatures: Initial temperature of each E-step objective: (η,) or (η, η_penalty)
    :param alphas: For each trust region, its name, the initial α and the number of constraints, e.g.
        ``{"mean": (1.0, A), "std": (10.0, A)}``; stored as parameters ``raw_alpha_<name>``
    :param floor: Smallest value any multiplier may take
    :param learn_temperatures: Whether the temperatures are a parameter moved by the dual's gradient; otherwise they
        are a buffer that holds the latest solved values (:meth:`store_temperatures`), saved and restored with the rest
    """

    def __init__(
        self,
        init_temperatures: tuple[float, ...],
        alphas: dict[str, tuple[float, int]],
        floor: float = losses.MULTIPLIER_FLOOR,
        learn_temperatures: bool = True,
    ):
        super().__init__()
        self.floor = floor
        raw_temperatures = th.tensor([losses.inverse_positive(init, floor) for init in init_temperatures])
        if learn_temperatures:
            self.raw_temperatures = nn.Parameter(raw_temperatures)
        else:
            self.register_buffer("raw_temperatures", raw_temperatures)
        for name, (init, n_constraints) in alphas.items():
            raw_alpha = th.full((n_constraints,), losses.inverse_positive(init, floor))
            self.register_parameter(f"raw_alpha_{name}", nn.Parameter(raw_alpha))

    @property
    def temperatures(self) -> th.Tensor:
        """The temperature of each E-step objective, shape (1,) or (2,)."""
        return losses.positive(self.raw_temperatures, self.floor)

    @property
    def temperature(self) -> th.Tensor:
        """The temperature η of the return's E-step."""
        return self.temperatures[0]

    @th.no_grad()
    def store_temperatures(self, values: th.Tensor) -> None:
        """
        Store solved temperatures (see ``learn_temperatures``), so that they are logged, saved and restored.

        :param values: One per E-step objective
        """
        self.raw_temperatures.copy_(losses.inverse_positive_tensor(values, self.floor))

    def alpha(self, name: str) -> th.Tensor:
        """
        :param name: A trust region given at construction
        :return: Its multipliers α, one per constraint
        """
        return losses.positive(getattr(self, f"raw_alpha_{name}"), self.floor)


class PolicyImprovement(ABC):
    """
    The action-space-specific half of an :class:`~sb3_mpo.MPO` model; it reads the model's networks, multipliers and
    hyperparameters, so it always sees their current values (also after ``load``).

    :param model: The MPO model it belongs to
    """

    def __init__(self, model: "MPO"):
        self.model = model

    @abstractmethod
    def trust_regions(self) -> dict[str, tuple[float, int]]:
        """:return: The M-step's multipliers: name -> (initial α, number of constraints)"""

    @property
    def n_objectives(self) -> int:
        """How many E-step objectives (each with its temperature) re-weight the actions: the return's, and others."""
        return 1

    @abstractmethod
    def bounds(self) -> dict[str, tuple[str, float]]:
        """
        :return: The KL constraints that :meth:`improve` reports: its diagnostic's key (``kl_q`` for the E-step, the
            M-step's after it) -> the hyperparameter that bounds it and its value
        """

    @abstractmethod
    def behaviour(self, observations: PyTorchObs | None, n_envs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        Act in the environments: uniformly during warm-up (``observations`` is None), else with the policy.

        :param observations: The environments' observations, or None during warm-up
        :param n_envs: Number of environments
        :return: The environments' actions, the actions replay stores, and their behaviour log-probabilities
        """

    @abstractmethod
    def target_values(
        self, observations: PyTorchObs, taken_actions: th.Tensor | None = None
    ) -> tuple[ImprovementBatch, TakenActionValues | None]:
        """
        Score the target policy's actions with the target critic: the one big forward that serves both the critic
        target (their expectation) and the E-step (their weights). The same forward also scores actions taken at these
        states, as Retrace needs: their target Q-values and target log-probabilities.

        :param observations: B states
        :param taken_actions: Stored actions (Gaussian-space, or action indices) at these states, shape (B, action_dim)
        :return: The target policy's actions with their target Q-values and the target policy's statistics, and the
            taken actions' values (``None`` without ``taken_actions``)
        """

    @abstractmethod
    def taken_q_values(self, critic: SampledCritic | QNetwork, observations: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """
        :param critic: The online or the target critic
        :param observations: B states
        :param actions: The stored actions (Gaussian-space, or action indices), shape (B, action_dim)
        :return: The critic's outputs at the pairs: Q(s, a), shape (B, 1), or each network's of an ensemble of critics,
            (B, n_critics); for a distributional critic its logits or mixture parameters, which the n-step evaluation
            scores as distributions instead of calling this
        """

    @abstractmethod
    def improve(self, batch: ImprovementBatch) -> ImprovementLosses:
        """
        E-step and M-step on the batch of :meth:`target_values`.

        :param batch: States, their scored actions and the target policy's statistics
        :return: The policy loss, the loss of the temperatures and multipliers, and detached diagnostics
        """

    def e_step_temperatures(
        self, q_values: th.Tensor, epsilons: list[float], log_prior: th.Tensor | None = None
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        The temperatures of the E-steps (paper, Sec. 3.2, Eq. (9)): solved on the batch, warm-started at the previous
        batch's solution, or the learned ones with the dual loss whose gradient moves them (``temperature_update``).

        :param q_values: Q(s, a) of K candidate actions per state for each E-step objective, shape (P, K, B)
        :param epsilons: The objectives' KL bounds
        :param log_prior: log π_old(a|s) of an enumerated action set, shape (P, K, B); ``None`` for samples of π_old
        :return: The temperatures, shape (P,), and the dual loss (zero when solved)
        """
        model = self.model
        temperatures = model.multipliers.temperatures
        if model.temperature_update == "solve":
            bounds = th.tensor(epsilons, dtype=q_values.dtype, device=q_values.device)
            temperatures = losses.solve_temperature(
                q_values, bounds, log_prior, initial=temperatures, iterations=model.temperature_iterations
            )
            model._average_over_workers([temperatures])  # data-parallel training: every worker uses the same η
            model.multipliers.store_temperatures(temperatures)
            return temperatures, th.zeros((), device=q_values.device)
        dual_loss = th.zeros((), device=q_values.device)
        for index, epsilon in enumerate(epsilons):
            if log_prior is None:
                dual_loss = dual_loss + losses.temperature_dual(q_values[index], temperatures[index], epsilon)
            else:
                dual_loss = dual_loss + losses.categorical_temperature_dual(
                    q_values[index].T, log_prior[index].T, temperatures[index], epsilon
                )
        return temperatures, dual_loss


class GaussianImprovement(PolicyImprovement):
    """
    MPO for ``Box`` actions: N actions sampled per state from the Gaussian target policy, a non-parametric E-step on
    them, and the decoupled M-step (paper, Sec. 3.2-3.3, Appendix D.3); with the clip bounding and ``epsilon_penalty``,
    MO-MPO's action penalty as a second E-step objective.
    """

    @property
    def actor(self) -> GaussianActor:
        return cast(GaussianActor, self.model.actor)

    @property
    def action_penalty(self) -> bool:
        """Whether the MO-MPO action penalty runs: only for clipped (unbounded) Gaussians, when ``epsilon_penalty`` is set."""
        return self.model.epsilon_penalty is not None and self.actor.action_bounding == "clip"

    @property
    def n_objectives(self) -> int:
        return 2 if self.action_penalty else 1

    def trust_regions(self) -> dict[str, tuple[float, int]]:
        model = self.model
        n_constraints = get_action_dim(model.action_space) if model.per_dim_constraints else 1
        return {"mean": (model.init_alpha_mean, n_constraints), "std": (model.init_alpha_std, n_constraints)}

    def bounds(self) -> dict[str, tuple[str, float]]:
        model = self.model
        return {
            "kl_q": ("epsilon", model.epsilon),
            # the action dimension furthest out (per_dim_constraints), which the mean over dimensions would dilute
            "kl_mean_max": ("epsilon_mean", model.epsilon_mean),
            "kl_std_max": ("epsilon_std", model.epsilon_std),
        }

    def behaviour(self, observations: PyTorchObs | None, n_envs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        Replay stores the policy's Gaussian sample ``u`` (not the clipped or squashed action) so the learner works with
        exact Gaussian densities; the environment receives ``squash(u)`` rescaled to its bounds.
        """
        actor, policy = self.actor, self.model.policy
        if observations is None:
            squashed = np.array([policy.scale_action(self.model.action_space.sample()) for _ in range(n_envs)])
            raw = actor.unsquash(squashed)
            log_prob = actor.uniform_log_density(raw)
        else:
            with th.no_grad():
                mean, std = actor.distribution_params(observations)
                raw_tensor = mean + std * th.randn_like(mean)
                squashed = actor.squash(raw_tensor).cpu().numpy()
                log_prob = losses.gaussian_log_prob(raw_tensor, mean, std).cpu().numpy()
            raw = raw_tensor.cpu().numpy()
        return policy.unscale_action(squashed), raw, log_prob

    def target_values(
        self, observations: PyTorchObs, taken_actions: th.Tensor | None = None
    ) -> tuple[ImprovementBatch, TakenActionValues | None]:
        model = self.model
        critic_target = cast(SampledCritic, model.critic_target)
        with th.no_grad():
            mean_old, std_old, actions, scored = self.old_policy_samples(observations, taken_actions)
            outputs = critic_target.sampled_outputs(observations, scored, model.target_dtype)
        return self.sampled_batch(observations, actions, mean_old, std_old, outputs, taken_actions)

    def joint_values(
        self,
        observations: PyTorchObs,
        actions: th.Tensor,
        next_observations: PyTorchObs,
        taken_actions: th.Tensor | None = None,
        in_statistics: th.Tensor | None = None,
    ) -> tuple[th.Tensor, SampledImprovementBatch, TakenActionValues | None]:
        """
        :meth:`target_values` for a critic without a target network (``batch_renorm``, CrossQ's rule): the critic scores
        the stored pairs and the target policy's actions at the next states in one pass, normalised alike
        (:meth:`~sb3_mpo.mpo.policies.SampledCritic.joint_outputs`).

        :param observations: B states of stored pairs
        :param actions: Their stored actions (Gaussian space), shape (B, A)
        :param next_observations: B' next states
        :param taken_actions: Stored actions at the next states (Gaussian space), shape (B', A), as Retrace needs
        :param in_statistics: Which next states join the normalisation's statistics, shape (B',) (None: all)
        :return: The critic's outputs at the stored pairs, (B, 1) with gradient; the batch of the E-step; the taken
            actions' values (``None`` without ``taken_actions``)
        """
        model, critic = self.model, cast(SampledCritic, self.model.critic)
        with th.no_grad():
            mean_old, std_old, sampled, scored = self.old_policy_samples(next_observations, taken_actions)
        current, outputs = critic.joint_outputs(
            observations, self.actor.squash(actions), next_observations, scored, in_statistics, model.target_dtype
        )
        batch, taken = self.sampled_batch(next_observations, sampled, mean_old, std_old, outputs, taken_actions)
        return current, batch, taken

    def old_policy_samples(
        self, observations: PyTorchObs, taken_actions: th.Tensor | None
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """
        :param observations: B states
        :param taken_actions: Stored actions at these states to score as well, (B, A), or None
        :return: π_old's mean and standard deviation (B, A); its N actions per state (N, B, A), Gaussian space; the
            actions to score, squashed into the box: the N samples, then the taken actions if any, (N[+1], B, A)
        """
        model, actor_target = self.model, cast(GaussianActor, self.model.actor_target)
        mean_old, std_old = actor_target.distribution_params(observations)
        noise = th.randn((model.n_action_samples, *mean_old.shape), device=model.device)
        actions = mean_old + std_old * noise
        scored = actions if taken_actions is None else th.cat([actions, taken_actions.unsqueeze(0)])
        return mean_old, std_old, actions, actor_target.squash(scored)

    def sampled_batch(
        self,
        observations: PyTorchObs,
        actions: th.Tensor,
        mean_old: th.Tensor,
        std_old: th.Tensor,
        outputs: th.Tensor,
        taken_actions: th.Tensor | None,
    ) -> tuple[SampledImprovementBatch, TakenActionValues | None]:
        """
        :param observations: B states
        :param actions: π_old's N actions per state, (N, B, A), Gaussian space
        :param mean_old: π_old's mean, (B, A)
        :param std_old: π_old's standard deviation, (B, A)
        :param outputs: The critic's outputs at the N actions, then at the taken actions if any, (N[+1], B, ·), no gradient
        :param taken_actions: The stored actions scored last, (B, A), or None
        :return: The E-step's batch (with a distributional critic's targets) and the taken actions' values
        """
        model, critic = self.model, cast(SampledCritic, self.model.critic)
        q_values = critic.values(outputs)  # (N[+1], B)
        n_samples = model.n_action_samples
        taken = None
        if taken_actions is not None:
            taken = TakenActionValues(q_values[-1], losses.gaussian_log_prob(taken_actions, mean_old, std_old))
        value_probs = value_samples = value_weights = None
        if critic.distribution == "categorical":
            value_probs = th.softmax(outputs[:n_samples], dim=-1).mean(dim=0)
        elif critic.distribution == "mixture":
            value_samples, value_weights = self.next_returns(critic.mixture(outputs[:n_samples]))
        batch = SampledImprovementBatch(
            observations, actions, q_values[:n_samples], mean_old, std_old, value_probs, value_samples, value_weights
        )
        return batch, taken

    def next_returns(self, mixtures: tuple[th.Tensor, th.Tensor, th.Tensor]) -> tuple[th.Tensor, th.Tensor | None]:
        """
        The returns at the next states that a mixture critic's targets are made of: ``mixture_return_samples`` draws of
        each sampled action's mixture, or with ``mixture_quadrature_nodes`` the quadrature's points and weights
        (:func:`~sb3_mpo.mpo.losses.mixture_quadrature`), each action weighing 1/N.

        :param mixtures: Log-weights, means and standard deviations of the mixtures at the N sampled actions, (N, B, M) each
        :return: The returns, (B, N·Z) or (B, N·M·K), and their weights (None for draws, which weigh alike)
        """
        nodes = self.model.mixture_quadrature_nodes
        if nodes is None:
            return losses.sample_mixture(*mixtures, (self.model.mixture_return_samples,)).flatten(0, 1).T, None
        points, weights = losses.mixture_quadrature(*mixtures, nodes)  # (N, B, M·K)
        return points.transpose(0, 1).flatten(1), weights.transpose(0, 1).flatten(1) / points.shape[0]

    def taken_q_values(self, critic: SampledCritic | QNetwork, observations: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        return th.cat(critic(observations, self.actor.squash(actions)), dim=1)

    def improve(self, batch: ImprovementBatch) -> ImprovementLosses:
        """E-step (paper, Sec. 3.2) and M-step (Sec. 3.3, Appendix D.3) on sampled actions and their target Q-values."""
        assert isinstance(batch, SampledImprovementBatch)
        model = self.model
        # E-step: non-parametric improvement of the sampled actions, temperature from the convex dual. With action
        # penalisation (MO-MPO) a second objective, −‖a − clip(a)‖ (or its square), re-weights the same samples with its
        # own bound.
        q_values, epsilons = batch.q_values.unsqueeze(0), [model.epsilon]
        if self.action_penalty:
            assert model.epsilon_penalty is not None
            q_values = th.stack([batch.q_values, losses.action_penalty_q(batch.actions, model.penalty_cost)])
            epsilons.append(model.epsilon_penalty)
        temperatures, dual_loss = self.e_step_temperatures(q_values, epsilons)
        objective_weights = losses.e_step_weights(q_values, temperatures[:, None, None])
        weights = objective_weights.sum(dim=0)
        diagnostics = {"temperature": temperatures[0].detach(), "kl_q": losses.sample_kl_to_old(objective_weights[0])}
        if self.action_penalty:
            diagnostics["temperature_penalty"] = temperatures[1].detach()

        # M-step: weighted maximum likelihood under the decoupled KL trust regions
        mean, std = self.actor.distribution_params(batch.observations)
        if self.actor.action_bounding == "clip":  # the deterministic action clip(μ) plays the box's faces there
            diagnostics["mean_outside_box"] = (mean.detach().abs() > 1.0).float().mean()
        penalties, multiplier_losses, trust_diagnostics = self.trust_region_losses(batch, mean, std)
        likelihood_loss = losses.decoupled_m_step_loss(weights, batch.actions, mean, std, batch.mean_old, batch.std_old)
        policy_loss = sum(penalties, start=likelihood_loss)
        return policy_loss, sum(multiplier_losses, start=dual_loss), {**diagnostics, **trust_diagnostics}

    def trust_region_losses(
        self, batch: SampledImprovementBatch, mean: th.Tensor, std: th.Tensor
    ) -> tuple[list[th.Tensor], list[th.Tensor], dict[str, th.Tensor]]:
        """
        The decoupled trust regions C_μ ≤ ε_μ and C_Σ ≤ ε_Σ (paper, Appendix D.3) in Lagrangian form.

        :param batch: The states and the target policy's statistics there
        :param mean: Mean of π_θ at the batch's states, shape (B, A)
        :param std: Standard deviation of π_θ there, shape (B, A)
        :return: The policy's penalties α·KL and the multipliers' losses α·(ε − KL), mean half first (to be summed onto
            the other losses in this order), and detached diagnostics
        """
        model = self.model
        kl = losses.decoupled_gaussian_kl(batch.mean_old, batch.std_old, mean, std, per_dim=model.per_dim_constraints)
        alpha_mean, alpha_std = model.multipliers.alpha("mean"), model.multipliers.alpha("std")
        penalties = [losses.lagrangian_penalty(alpha_mean, kl.mean), losses.lagrangian_penalty(alpha_std, kl.std)]
        multiplier_losses = [
            losses.multiplier_loss(alpha_mean, model.epsilon_mean, kl.mean),
            losses.multiplier_loss(alpha_std, model.epsilon_std, kl.std),
        ]
        diagnostics = {
            "alpha_mean": alpha_mean.detach().mean(),
            "alpha_std": alpha_std.detach().mean(),
            "kl_mean": kl.mean.detach().mean(),  # over the action dimensions with per_dim_constraints
            "kl_std": kl.std.detach().mean(),
            "kl_mean_max": kl.mean.detach().max(),  # their largest (the joint KL without per_dim_constraints)
            "kl_std_max": kl.std.detach().max(),
            "std_mean": std.detach().mean(),
        }
        return penalties, multiplier_losses, diagnostics


class ParametricGaussianImprovement(GaussianImprovement):
    """
    MPO's parametric policy improvement for ``Box`` actions (``policy_improvement="parametric"``; paper, Sec. 3.2 with
    a parametric q(a|s; θ) of the policy's own form, so that there is no separate M-step): the policy maximises the
    expected advantage of its own reparameterised samples, A(s, a) = Q'(s, a) − E_{π_old} Q'(s, ·), read through the
    target critic (whose parameters the policy loss leaves alone), under the same decoupled trust regions as the
    non-parametric M-step. With the clip bounding and ``epsilon_penalty`` set, the action penalty (``penalty_cost``) is
    added to the advantage, so the Gaussian is still pulled back inside the bounds. There is no temperature: the trust
    regions alone bound the step, and their multipliers scale with the size of the advantages. Each half of the loss
    draws K = ``parametric_samples`` actions per state (N = ``n_action_samples`` by default); the 2K actions pass through
    the target critic with gradient (to the actions only) in ``target_precision``, like the target pass.
    """

    @property
    def n_objectives(self) -> int:
        return 1

    def bounds(self) -> dict[str, tuple[str, float]]:
        return {key: bound for key, bound in super().bounds().items() if key != "kl_q"}  # no E-step

    def improve(self, batch: ImprovementBatch) -> ImprovementLosses:
        assert isinstance(batch, SampledImprovementBatch)
        actor, critic = self.actor, cast(SampledCritic, self.model.critic_target)
        mean, std = actor.distribution_params(batch.observations)
        n_samples = self.model.parametric_samples or batch.actions.shape[0]
        noise = th.randn((n_samples, *mean.shape), device=mean.device)
        actions_mean, actions_std = losses.decoupled_reparameterised_actions(noise, mean, std, batch.mean_old, batch.std_old)
        actions = th.cat([actions_mean, actions_std])  # (2K, B, A)
        q_values = critic.sampled_q_values(batch.observations, actor.squash(actions), self.model.target_dtype)
        if self.action_penalty:
            q_values = q_values + losses.action_penalty_q(actions, self.model.penalty_cost)
        improvement_loss = losses.parametric_improvement_loss(q_values[:n_samples], q_values[n_samples:], batch.expected_q())
        penalties, multiplier_losses, diagnostics = self.trust_region_losses(batch, mean, std)
        return (
            sum(penalties, start=improvement_loss),
            sum(multiplier_losses, start=th.zeros_like(improvement_loss)),
            diagnostics,
        )


class CategoricalImprovement(PolicyImprovement):
    """
    Categorical MPO for ``Discrete`` actions: every action enumerated, so the critic target and the E-step are exact
    expectations (paper, Sec. 3.2, Eq. (8)-(9)), and the M-step has one trust region KL(π_old || π) ≤ ``epsilon_policy``
    (Sec. 3.3, Eq. (12)).
    """

    @property
    def actor(self) -> CategoricalActor:
        return cast(CategoricalActor, self.model.actor)

    def trust_regions(self) -> dict[str, tuple[float, int]]:
        return {"policy": (self.model.init_alpha_mean, 1)}

    def bounds(self) -> dict[str, tuple[str, float]]:
        return {"kl_q": ("epsilon", self.model.epsilon), "kl_policy": ("epsilon_policy", self.model.epsilon_policy)}

    def behaviour(self, observations: PyTorchObs | None, n_envs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The action (for the environment and for replay, the same) and its behaviour log-probability."""
        action_space = cast(spaces.Discrete, self.model.action_space)
        if observations is None:
            actions = np.array([action_space.sample() for _ in range(n_envs)])
            return actions, actions, np.full(n_envs, -np.log(action_space.n))
        with th.no_grad():
            actions_tensor, log_prob = self.actor.sample(observations)
        actions = actions_tensor.cpu().numpy()
        return actions, actions, log_prob.cpu().numpy()

    def target_values(
        self, observations: PyTorchObs, taken_actions: th.Tensor | None = None
    ) -> tuple[ImprovementBatch, TakenActionValues | None]:
        model = self.model
        taken = None
        with th.no_grad():
            q_values = model.critic_target(observations)
            log_probs_old = cast(CategoricalActor, model.actor_target).log_probs(observations)
            if taken_actions is not None:
                indices = taken_actions.long().reshape(-1, 1)
                taken = TakenActionValues(
                    q_values.gather(1, indices).squeeze(-1), log_probs_old.gather(1, indices).squeeze(-1)
                )
        return CategoricalImprovementBatch(observations, q_values, log_probs_old), taken

    def taken_q_values(self, critic: SampledCritic | QNetwork, observations: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        return critic(observations).gather(1, actions.long().reshape(-1, 1))

    def improve(self, batch: ImprovementBatch) -> ImprovementLosses:
        """Exact E-step over the action set and M-step with one trust region on the categorical policy."""
        assert isinstance(batch, CategoricalImprovementBatch)
        model = self.model
        temperatures, dual_loss = self.e_step_temperatures(
            batch.q_values.T[None], [model.epsilon], batch.log_probs_old.T[None]
        )
        temperature = temperatures[0]
        weights = losses.categorical_e_step_weights(batch.q_values, batch.log_probs_old, temperature)

        log_probs = self.actor.log_probs(batch.observations)
        kl = losses.categorical_kl(batch.log_probs_old, log_probs).mean()
        alpha = model.multipliers.alpha("policy")
        # Σ_a q(a|s) log π(a|s) is the weighted likelihood with the actions as the "samples" axis
        policy_loss = -losses.weighted_log_likelihood(weights.T, log_probs.T) + losses.lagrangian_penalty(alpha, kl)
        dual_loss = dual_loss + losses.multiplier_loss(alpha, model.epsilon_policy, kl)
        diagnostics = {
            "temperature": temperature.detach(),
            "kl_q": losses.categorical_kl(weights.log(), batch.log_probs_old).mean(),
            GREEDY_KL: losses.greedy_e_step_kl(batch.q_values, batch.log_probs_old),
            "alpha_policy": alpha.detach().mean(),
            "kl_policy": kl.detach(),
            # torch's entropy treats a zero probability as 0·log 0 = 0
            "entropy": th.distributions.Categorical(logits=log_probs.detach()).entropy().mean(),
        }
        return policy_loss, dual_loss, diagnostics


def make_improvement(model: "MPO") -> PolicyImprovement:
    """
    :return: The improvement of the model's action space (``Discrete``: categorical; ``Box``: Gaussian) and of its
        ``policy_improvement``
    """
    if isinstance(model.action_space, spaces.Discrete):
        if model.policy_improvement != "nonparametric":
            raise ValueError(
                f"MPO: policy_improvement={model.policy_improvement!r} is invalid with a Discrete action space, expected "
                "'nonparametric': the categorical E-step is already exact over the action set"
            )
        if model.target_precision == "bfloat16":
            raise ValueError(
                f"MPO: target_precision={model.target_precision!r} is invalid with a Discrete action space, expected "
                "'float32' or 'auto' (which keeps float32 there): the categorical target critic scores every action in "
                "one small forward pass, not N samples"
            )
        return CategoricalImprovement(model)
    if model.policy_improvement == "parametric":
        return ParametricGaussianImprovement(model)
    return GaussianImprovement(model)
