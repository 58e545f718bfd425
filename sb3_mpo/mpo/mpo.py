import io
import pathlib
from collections import defaultdict
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar, cast

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, ReplayBufferSamples, Schedule
from stable_baselines3.common.utils import get_parameters_by_name, polyak_update
from stable_baselines3.dqn.policies import QNetwork
from torch import nn
from torch.nn import functional as F

from sb3_mpo.common import checks
from sb3_mpo.common.allocator import keep_freed_blocks_in_heap
from sb3_mpo.common.buffers import SegmentReplayBuffer, SegmentSamples
from sb3_mpo.mpo import losses
from sb3_mpo.mpo.policies import (
    CategoricalActor,
    CnnPolicy,
    GaussianActor,
    MlpPolicy,
    MPOPolicy,
    MultiInputPolicy,
    SampledCritic,
)
from sb3_mpo.mpo.retrace import retrace_targets

SelfMPO = TypeVar("SelfMPO", bound="MPO")
QTarget = Literal["n_step", "retrace"]
TemperatureUpdate = Literal["solve", "gradient"]


class NonFiniteError(FloatingPointError):
    """
    Raised when a loss, gradient or multiplier becomes NaN or infinite (training stops before any parameter moves), or
    when an environment hands over a non-finite observation, action or reward (refused before it is stored).
    """


def _select_observations(observations: PyTorchObs, mask: th.Tensor) -> PyTorchObs:
    """Keep the states of an observation batch where ``mask`` (shape (B,)) is true."""
    if isinstance(observations, dict):
        return {key: obs[mask] for key, obs in observations.items()}
    return observations[mask]


class SampledImprovementBatch(NamedTuple):
    """What the E-step and M-step need for a Gaussian policy: B states, N target-policy samples per state."""

    observations: PyTorchObs
    actions: th.Tensor  # (N, B, A), Gaussian space
    q_values: th.Tensor  # (N, B), target critic
    mean_old: th.Tensor  # (B, A)
    std_old: th.Tensor  # (B, A)

    def expected_q(self) -> th.Tensor:
        """Monte-Carlo estimate of E_{π_old}[Q'(s, ·)] from the N samples, shape (B,)."""
        return self.q_values.mean(dim=0)

    def select(self, mask: th.Tensor) -> "SampledImprovementBatch":
        """Keep the states where ``mask`` (shape (B,)) is true."""
        return SampledImprovementBatch(
            _select_observations(self.observations, mask),
            self.actions[:, mask],
            self.q_values[:, mask],
            self.mean_old[mask],
            self.std_old[mask],
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
            _select_observations(self.observations, mask), self.q_values[mask], self.log_probs_old[mask]
        )


ImprovementBatch = SampledImprovementBatch | CategoricalImprovementBatch


class PolicyEvaluation(NamedTuple):
    """The critic's loss and the batch on which the policy is then improved."""

    critic_loss: th.Tensor
    q_mean: th.Tensor
    improvement: ImprovementBatch


class TakenActionValues(NamedTuple):
    """The target networks' view of stored actions: Q'(s, a) and log π_old(a|s), each of shape (B,)."""

    q_values: th.Tensor
    log_probs: th.Tensor


def _delay(values: th.Tensor) -> th.Tensor:
    """Shift a (B, L) tensor one step later in time: out[:, t] = values[:, t − 1], and out[:, 0] = 0."""
    return F.pad(values[:, :-1], (1, 0))


def _flatten_time(observations: PyTorchObs) -> PyTorchObs:
    """Merge the batch and time axes of segment observations: (B, L, ...) -> (B·L, ...)."""
    if isinstance(observations, dict):
        return {key: obs.flatten(0, 1) for key, obs in observations.items()}
    return observations.flatten(0, 1)


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
        floor: float = 1e-8,
        learn_temperatures: bool = True,
    ):
        super().__init__()
        self.floor = floor
        self.alpha_names = tuple(alphas)
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


class MPO(OffPolicyAlgorithm):
    """
    Maximum a Posteriori Policy Optimisation (MPO)
    Paper: https://arxiv.org/abs/1806.06920 (Abdolmaleki et al., ICLR 2018)
    Reference implementations: DeepMind Acme (https://github.com/google-deepmind/acme) and Tonic
    (https://github.com/fabiopardo/tonic).

    Each gradient step evaluates the policy with Retrace targets over trajectory segments (or expected-SARSA n-step
    returns), whose expectations use ``n_action_samples`` samples of the target policy, then improves it by
    coordinate ascent: a non-parametric E-step re-weights those same samples with the temperature η of a
    KL-constrained problem, and a parametric M-step fits the Gaussian policy to the weighted samples by maximum
    likelihood under decoupled mean / covariance KL trust regions.

    With a ``Discrete`` action space the policy is categorical and the critic outputs Q(s, a) for every action: the
    E-step and the critic targets take exact expectations over the action set instead of sampling, and the M-step has
    one trust region, KL(π_old || π) ≤ ``epsilon_policy``.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: learning rate for the Adam optimisers of the actor and the critic,
        it can be a function of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer
    :param learning_starts: how many steps of the model to collect transitions for before learning starts
    :param batch_size: Minibatch size for each gradient update
    :param tau: the soft update coefficient of the target networks ("Polyak update", between 0 and 1);
        ``tau=1`` with ``target_update_interval=K`` is a hard copy every K gradient steps
    :param gamma: the discount factor
    :param train_freq: Update the model every ``train_freq`` steps. Alternatively pass a tuple of frequency and unit
        like ``(5, "step")`` or ``(2, "episode")``.
    :param gradient_steps: How many gradient steps to do after each rollout (see ``train_freq``)
        Set to ``-1`` means to do as many gradient steps as steps done in the environment during the rollout.
    :param replay_buffer_class: Replay buffer class to use. If ``None``, it will be automatically selected.
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation.
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer
    :param n_steps: With ``q_target="n_step"``: the critic target is the expected-SARSA n-step return
        (SB3's NStepReplayBuffer); ``n_steps=1`` is the 1-step TD target. Must be 1 with Retrace
    :param q_target: ``"retrace"`` (the default: Retrace over trajectory segments of the
        :class:`~sb3_mpo.common.buffers.SegmentReplayBuffer`, as in the paper) or ``"n_step"`` (expected-SARSA n-step
        return over transitions, for ``n_steps > 1`` or a replay buffer of your own); with Retrace, ``batch_size``
        still counts transitions (``ceil(batch_size / segment_length)`` segments). The default is the measured one:
        docs/critic_targets.md
    :param segment_length: Length L of the trajectory segments used by Retrace
    :param retrace_lambda: Trace decay λ of Retrace, c_k = λ·min(1, π(a_k|s_k) / b(a_k|s_k))
    :param n_action_samples: Number N of actions sampled per state for the E-step and the critic target
        (``Box`` only: with ``Discrete`` actions every action is enumerated)
    :param epsilon: Bound ε on KL(q || π_old) in the E-step
    :param epsilon_mean: Bound ε_μ on the mean half of the M-step trust region (``Box`` only)
    :param epsilon_std: Bound ε_Σ on the covariance half of the M-step trust region (``Box`` only)
    :param epsilon_policy: Bound on KL(π_old || π) in the M-step of a categorical policy (``Discrete`` only)
    :param epsilon_penalty: Bound on the KL of the action-penalty E-step (MO-MPO), used with the ``"clip"`` action
        bounding; ``None`` switches action penalisation off
    :param per_dim_constraints: One trust region (and multiplier) per action dimension rather than a joint one
        (``Box`` only)
    :param temperature_update: How the E-step's temperature η (and the action penalty's) is found: ``"solve"``
        minimises the convex dual on every batch (:func:`~sb3_mpo.mpo.losses.solve_temperature`), so that
        KL(q || π_old) = ε whatever the scale of the rewards; ``"gradient"`` takes one Adam step on the dual per update
        (``dual_learning_rate``), as DeepMind's and Tonic's implementations do, so η moves slowly under large rewards
    :param init_temperature: Initial temperature η (and initial temperature of the action penalty); with
        ``temperature_update="solve"`` only the value logged before the first update
    :param init_alpha_mean: Initial multiplier α_μ (with ``Discrete`` actions: the initial α of ``epsilon_policy``)
    :param init_alpha_std: Initial multiplier α_Σ
    :param dual_learning_rate: Learning rate of the Adam optimiser of the temperatures and multipliers
    :param max_grad_norm: Clip the gradient norm of the actor and of the critic to this value (``None``: no clipping)
    :param target_update_interval: update the target networks every ``target_update_interval`` gradient steps
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    policy: MPOPolicy
    #: Newton steps of the temperature solve per update (``temperature_update="solve"``), warm-started at the previous
    #: batch's temperature; see :func:`~sb3_mpo.mpo.losses.solve_temperature`
    temperature_iterations: int = 4
    #: On Linux (glibc), ``learn`` keeps freed blocks of up to 32 MiB in the C heap (and up to 256 MiB free at its top)
    #: instead of returning them to the system after every update, so the next update does not fault its large tensors
    #: in again (:mod:`sb3_mpo.common.allocator`): 1.3x faster updates on HalfCheetah-v5. Process-wide; set to False
    #: before ``learn`` to leave the C library's defaults alone.
    keep_freed_memory_in_heap: ClassVar[bool] = True
    actor: GaussianActor | CategoricalActor
    actor_target: GaussianActor | CategoricalActor
    critic: SampledCritic | QNetwork
    critic_target: SampledCritic | QNetwork

    def __init__(
        self,
        policy: str | type[MPOPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 1_000_000,  # 1e6
        learning_starts: int = 100,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        q_target: QTarget = "retrace",
        segment_length: int = 8,
        retrace_lambda: float = 0.95,
        n_action_samples: int = 20,
        epsilon: float = 0.1,
        epsilon_mean: float = 1e-3,
        epsilon_std: float = 1e-5,
        epsilon_policy: float = 1e-2,
        epsilon_penalty: float | None = 1e-3,
        per_dim_constraints: bool = True,
        temperature_update: TemperatureUpdate = "solve",
        init_temperature: float = 1.0,
        init_alpha_mean: float = 1.0,
        init_alpha_std: float = 10.0,
        dual_learning_rate: float = 1e-2,
        max_grad_norm: float | None = 40.0,
        target_update_interval: int = 1,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        self._check_arguments(
            policy=policy,
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            n_steps=n_steps,
            q_target=q_target,
            segment_length=segment_length,
            retrace_lambda=retrace_lambda,
            n_action_samples=n_action_samples,
            epsilon=epsilon,
            epsilon_mean=epsilon_mean,
            epsilon_std=epsilon_std,
            epsilon_policy=epsilon_policy,
            epsilon_penalty=epsilon_penalty,
            temperature_update=temperature_update,
            init_temperature=init_temperature,
            init_alpha_mean=init_alpha_mean,
            init_alpha_std=init_alpha_std,
            dual_learning_rate=dual_learning_rate,
            max_grad_norm=max_grad_norm,
            target_update_interval=target_update_interval,
            learning_starts=learning_starts,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            per_dim_constraints=per_dim_constraints,
            stats_window_size=stats_window_size,
            policy_kwargs=policy_kwargs,
        )
        if env is not None and not isinstance(env, str):
            self._check_action_space(env.action_space)  # before SB3's own assertions, with a clearer message
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            action_noise=None,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            sde_support=False,
            supported_action_spaces=None,  # checked below, with a message that names what is accepted
            support_multi_env=True,
        )
        if isinstance(env, str):  # SB3 has just made the env from its id; an env object was checked above
            self._check_action_space(self.action_space)

        self.q_target = q_target
        self.segment_length = segment_length
        self.retrace_lambda = retrace_lambda
        self.n_action_samples = n_action_samples
        self.epsilon = epsilon
        self.epsilon_mean = epsilon_mean
        self.epsilon_std = epsilon_std
        self.epsilon_policy = epsilon_policy
        self.epsilon_penalty = epsilon_penalty
        self.per_dim_constraints = per_dim_constraints
        self.temperature_update = temperature_update
        self.init_temperature = init_temperature
        self.init_alpha_mean = init_alpha_mean
        self.init_alpha_std = init_alpha_std
        self.dual_learning_rate = dual_learning_rate
        self.max_grad_norm = max_grad_norm
        self.target_update_interval = target_update_interval
        self.multipliers: LagrangeMultipliers
        self.multipliers_optimizer: th.optim.Adam

        if _init_setup_model:
            self._setup_model()

    @classmethod
    def _check_arguments(cls, **arguments: Any) -> None:
        """
        Reject bad hyperparameters before anything is built, with the checks that RL Zoo's shares
        (:mod:`sb3_mpo.common.checks`): the type, finiteness and range of each value (integers where integers are
        meant, NumPy numbers accepted, booleans refused), the contents of ``policy_kwargs``, then the constraints
        between arguments.

        :param arguments: Constructor arguments by name
        :raises ValueError: naming the first bad argument, its value and what is accepted
        """
        owner, policy = cls.__name__, arguments["policy"]
        if isinstance(policy, str) and policy not in cls.policy_aliases:
            raise ValueError(f"policy={policy!r} is unknown: use one of {sorted(cls.policy_aliases)} or a policy class")
        checks.check_arguments(owner, arguments, checks.constructor_parameters(cls))
        if arguments.get("policy_kwargs") is not None:
            policy_class = cls.policy_aliases[policy] if isinstance(policy, str) else policy
            checks.check_policy_kwargs(owner, policy_class, arguments["policy_kwargs"])
        batch_size, n_steps = arguments["batch_size"], arguments["n_steps"]
        relations = [
            ("buffer_size", arguments["buffer_size"] >= batch_size, f"an integer >= batch_size={batch_size}"),
            (
                "n_steps",
                arguments["q_target"] != "retrace" or n_steps == 1,
                "1 with q_target='retrace' (the default); pass q_target='n_step' for n-step returns",
            ),
        ]
        for name, ok, accepted in relations:
            if not ok:
                raise ValueError(f"{owner}: {name}={arguments[name]!r} is invalid, expected {accepted}")

    @staticmethod
    def _check_action_space(action_space: spaces.Space) -> None:
        """
        Refuse the action spaces MPO cannot act in, saying what it accepts.

        :param action_space: The environment's action space
        :raises ValueError: for a space other than a bounded Box or a Discrete space of at least 2 actions from 0
        """
        if isinstance(action_space, spaces.Discrete):
            if action_space.n < 2:
                raise ValueError(f"MPO needs a Discrete action space with at least 2 actions, got {action_space}")
            if action_space.start != 0:
                raise ValueError(
                    f"MPO needs a Discrete action space whose actions start at 0, got {action_space}: wrap the "
                    f"environment in a gymnasium.ActionWrapper whose action_space is Discrete({action_space.n}) and "
                    f"whose action(a) returns a + {action_space.start}"
                )
            return
        if not isinstance(action_space, spaces.Box):
            raise ValueError(
                "MPO supports Box (continuous, bounded) and Discrete action spaces; the environment's is "
                f"{action_space}. MultiDiscrete, MultiBinary and other spaces are not supported."
            )
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            raise ValueError(
                f"MPO needs a bounded Box action space (finite low and high) to map the policy into it, got {action_space}"
            )
        empty = np.argwhere(~(action_space.low < action_space.high))
        if len(empty) > 0:
            dimensions = [int(index[0]) if len(index) == 1 else tuple(map(int, index)) for index in empty]
            raise ValueError(
                f"MPO needs low < high in every dimension of a Box action space to map the policy into it, got "
                f"{action_space} whose dimension(s) {dimensions} have low >= high: remove the constant dimension(s) "
                "with a gymnasium.ActionWrapper that fills them in"
            )

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """
        Store one step of every environment (SB3's ``_store_transition``) once its observations, actions and rewards
        are all finite: a NaN or an infinity in replay would stop every later update, so it never gets there.

        :param replay_buffer: The replay buffer
        :param buffer_action: The actions to store (Gaussian-space ``u``, or action indices)
        :param new_obs: The next observations (the first of a new episode where one ended)
        :param reward: The rewards
        :param dones: The episode ends
        :param infos: The environments' infos, with the terminal observations of the episodes that ended
        :raises NonFiniteError: naming the quantity, the environment and the env step; nothing of the step is stored
        """
        if self._vec_normalize_env is not None:  # replay stores the values before normalisation, as SB3 does
            observation = self._last_original_obs
            next_observation = self._vec_normalize_env.get_original_obs()
            stored_reward = self._vec_normalize_env.get_original_reward()
        else:
            observation, next_observation, stored_reward = self._last_obs, new_obs, reward
        assert observation is not None, "self._last_obs was not set"
        terminal_observations = {
            int(index): infos[index]["terminal_observation"]
            for index in np.flatnonzero(dones)
            if infos[index].get("terminal_observation") is not None
        }
        quantities = {
            "observation": observation,
            "next observation": next_observation,
            "action": buffer_action,
            "reward": stored_reward,
        }
        found = checks.non_finite_transition(quantities, terminal_observations)
        if found is not None:
            quantity, env_index = found
            raise NonFiniteError(
                f"MPO: non-finite {quantity} from env {env_index} at env step {self.num_timesteps}; nothing of this "
                "step was stored in the replay buffer. Check the environment and its wrappers."
            )
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)

    def load_replay_buffer(self, path: str | pathlib.Path | io.BufferedIOBase, truncate_last_traj: bool = True) -> None:
        """
        Load a replay buffer from a pickle file (SB3's ``load_replay_buffer``), refusing one that this model would
        sample differently from its own: a transition buffer (e.g. SAC's) where Retrace samples segments, a segment
        buffer where n-step targets sample transitions, or another ``segment_length``, ``n_steps`` or n-step ``gamma``.

        :param path: Path to the pickled replay buffer
        :param truncate_last_traj: Passed on to SB3, which reads it for a ``HerReplayBuffer`` only
        :raises ValueError: saying what differs; the model keeps its own replay buffer
        """
        own = self.replay_buffer
        super().load_replay_buffer(path, truncate_last_traj)
        mismatch = None if own is None else checks.replay_buffer_mismatch(own, self.replay_buffer)
        if mismatch is not None:
            self.replay_buffer = own
            raise ValueError(
                f"MPO: the replay buffer in {path} does not fit this model (q_target={self.q_target!r}, "
                f"segment_length={self.segment_length}, n_steps={self.n_steps}): {mismatch}. The model keeps its own "
                "replay buffer; load this one into a model built with the settings it was saved with."
            )

    def _setup_model(self) -> None:
        if self.q_target == "retrace":
            if self.replay_buffer_class is None:
                self.replay_buffer_class = SegmentReplayBuffer
            elif not issubclass(self.replay_buffer_class, SegmentReplayBuffer):
                raise ValueError(
                    f"MPO: replay_buffer_class={self.replay_buffer_class.__name__} is invalid with q_target='retrace' "
                    "(the default), expected None or a SegmentReplayBuffer subclass; pass q_target='n_step' to train "
                    "on a transition buffer"
                )
            self.replay_buffer_kwargs = {"segment_length": self.segment_length, **self.replay_buffer_kwargs}
        elif self.replay_buffer_class is NStepReplayBuffer and self.replay_buffer_kwargs.get("n_steps") == self.n_steps:
            # A loaded model carries the buffer class SB3 picked for n_steps > 1. Clearing it lets SB3 pick the same
            # class and arguments again, instead of warning that a custom class ignores n_steps.
            self.replay_buffer_class = None
        super()._setup_model()
        self._create_aliases()
        self.batch_norm_stats = get_parameters_by_name(self.critic, ["running_"])
        self.batch_norm_stats_target = get_parameters_by_name(self.critic_target, ["running_"])
        if self.discrete:
            alphas = {"policy": (self.init_alpha_mean, 1)}
        else:
            n_constraints = get_action_dim(self.action_space) if self.per_dim_constraints else 1
            alphas = {"mean": (self.init_alpha_mean, n_constraints), "std": (self.init_alpha_std, n_constraints)}
        self.multipliers = LagrangeMultipliers(
            init_temperatures=(self.init_temperature,) * (2 if self.action_penalty else 1),
            alphas=alphas,
            learn_temperatures=self.temperature_update == "gradient",
        ).to(self.device)
        self.multipliers_optimizer = th.optim.Adam(self.multipliers.parameters(), lr=self.dual_learning_rate, fused=True)

    def _create_aliases(self) -> None:
        self.actor = self.policy.actor
        self.actor_target = self.policy.actor_target
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target

    @property
    def discrete(self) -> bool:
        """Whether the action space is ``Discrete`` (categorical MPO)."""
        return isinstance(self.action_space, spaces.Discrete)

    @property
    def action_penalty(self) -> bool:
        """Whether the MO-MPO action penalty runs: only for clipped (unbounded) Gaussians, when ``epsilon_penalty`` is set."""
        actor = self.policy.actor
        return self.epsilon_penalty is not None and isinstance(actor, GaussianActor) and actor.action_bounding == "clip"

    def _sample_action(
        self, learning_starts: int, action_noise: ActionNoise | None = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        Sample actions for the environment and for replay; before ``learning_starts`` they are uniform.
        A segment buffer (Retrace) also receives the behaviour policy's log-probability of each stored action.

        :param learning_starts: Number of steps before learning for the warm-up phase.
        :param action_noise: Not used by MPO, whose exploration is its stochastic policy
        :param n_envs: Number of environments
        :return: action to take in the environment and action to store in the buffer
        """
        warm_up = self.num_timesteps < learning_starts
        if self.discrete:
            action, buffer_action, log_prob = self._sample_categorical_action(warm_up, n_envs)
        else:
            action, buffer_action, log_prob = self._sample_gaussian_action(warm_up, n_envs)
        if isinstance(self.replay_buffer, SegmentReplayBuffer):
            self.replay_buffer.stage_behaviour_log_prob(log_prob)
        return action, buffer_action

    def _last_obs_tensor(self) -> PyTorchObs:
        assert self._last_obs is not None, "self._last_obs was not set"
        return self.policy.obs_to_tensor(self._last_obs)[0]

    def _sample_gaussian_action(self, warm_up: bool, n_envs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        Replay stores the policy's Gaussian sample ``u`` (not the clipped or squashed action) so the learner works with
        exact Gaussian densities; the environment receives ``squash(u)`` rescaled to its bounds.

        :return: The environment's action, the Gaussian-space action ``u`` and its behaviour log-density
        """
        actor = cast(GaussianActor, self.actor)
        if warm_up:
            squashed = np.array([self.policy.scale_action(self.action_space.sample()) for _ in range(n_envs)])
            raw = actor.unsquash(squashed)
            log_prob = actor.uniform_log_density(raw)
        else:
            with th.no_grad():
                mean, std = actor.distribution_params(self._last_obs_tensor())
                raw_tensor = mean + std * th.randn_like(mean)
                squashed = actor.squash(raw_tensor).cpu().numpy()
                log_prob = losses.gaussian_log_prob(raw_tensor, mean, std).cpu().numpy()
            raw = raw_tensor.cpu().numpy()
        return self.policy.unscale_action(squashed), raw, log_prob

    def _sample_categorical_action(self, warm_up: bool, n_envs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        :return: The action (for the environment and for replay, the same) and its behaviour log-probability
        """
        if warm_up:
            actions = np.array([self.action_space.sample() for _ in range(n_envs)])
            return actions, actions, np.full(n_envs, -np.log(self.action_space.n))  # type: ignore[attr-defined]
        actor = cast(CategoricalActor, self.actor)
        with th.no_grad():
            actions_tensor, log_prob = actor.sample(self._last_obs_tensor())
        actions = actions_tensor.cpu().numpy()
        return actions, actions, log_prob.cpu().numpy()

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        if self.q_target == "retrace":
            # batch_size counts transitions: as many segments as hold about that many
            batch_size = max(1, -(-batch_size // self.segment_length))

        stats: dict[str, list[th.Tensor]] = defaultdict(list)
        for _ in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            for key, value in self._gradient_step(replay_data).items():
                stats[key].append(value)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        for key, values in stats.items():
            self.logger.record(f"train/{key}", th.stack(values).mean().item())

    def _gradient_step(self, replay_data: ReplayBufferSamples | SegmentSamples) -> dict[str, th.Tensor]:
        """
        One update of critic, policy and multipliers. Policy evaluation and improvement share one forward pass of the
        target networks at the next states of the batch.

        :param replay_data: A batch of transitions (n-step) or of trajectory segments (Retrace)
        :return: Detached diagnostics for the logger
        """
        if isinstance(replay_data, SegmentSamples):
            evaluation = self._retrace_evaluation(replay_data)
        else:
            evaluation = self._n_step_evaluation(replay_data)
        if isinstance(evaluation.improvement, CategoricalImprovementBatch):
            policy_loss, dual_loss, diagnostics = self._categorical_improvement(evaluation.improvement)
        else:
            policy_loss, dual_loss, diagnostics = self._gaussian_improvement(evaluation.improvement)

        # The three losses touch disjoint parameters: one backward pass serves all of them
        optimizers = [self.critic.optimizer, self.actor.optimizer, self.multipliers_optimizer]
        for optimizer in optimizers:
            optimizer.zero_grad()
        (evaluation.critic_loss + policy_loss + dual_loss).backward()
        checked = {
            "critic_loss": evaluation.critic_loss.detach(),
            "actor_loss": policy_loss.detach(),
            "dual_loss": dual_loss.detach(),
            "critic_grad_norm": self._clip_grad_norm(self.critic.optimizer),
            "actor_grad_norm": self._clip_grad_norm(self.actor.optimizer),
            **diagnostics,
        }
        self._raise_if_not_finite(checked)
        for optimizer in optimizers:
            optimizer.step()

        self._n_updates += 1
        if self._n_updates % self.target_update_interval == 0:
            polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
            polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
            # Copy running stats, see SB3 GH issue #996
            polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
        return {**checked, "q_mean": evaluation.q_mean}

    def _target_policy_values(
        self, observations: PyTorchObs, taken_actions: th.Tensor | None = None
    ) -> tuple[ImprovementBatch, TakenActionValues | None]:
        """
        Score the target policy's actions with the target critic: the one big forward that serves both the critic
        target (their expectation) and the E-step (their weights). A Gaussian policy draws N actions per state; a
        categorical one enumerates every action. The same forward also scores actions taken at these states, as
        Retrace needs: their target Q-values and target log-probabilities.

        :param observations: B states
        :param taken_actions: Stored actions (Gaussian-space, or action indices) at these states, shape (B, action_dim)
        :return: The sampled (or enumerated) actions' target Q-values with the target policy's statistics, and the
            taken actions' values (``None`` without ``taken_actions``)
        """
        taken = None
        with th.no_grad():
            if isinstance(self.actor_target, CategoricalActor):
                q_values = self.critic_target(observations)
                log_probs_old = self.actor_target.log_probs(observations)
                if taken_actions is not None:
                    indices = taken_actions.long().reshape(-1, 1)
                    taken = TakenActionValues(
                        q_values.gather(1, indices).squeeze(-1), log_probs_old.gather(1, indices).squeeze(-1)
                    )
                return CategoricalImprovementBatch(observations, q_values, log_probs_old), taken
            critic_target = cast(SampledCritic, self.critic_target)
            mean_old, std_old = self.actor_target.distribution_params(observations)
            noise = th.randn((self.n_action_samples, *mean_old.shape), device=self.device)
            actions = mean_old + std_old * noise  # (N, B, A), Gaussian space
            scored = actions if taken_actions is None else th.cat([actions, taken_actions.unsqueeze(0)])
            q_values = critic_target.sampled_q_values(observations, self.actor_target.squash(scored))  # (N[+1], B)
            if taken_actions is not None:
                taken = TakenActionValues(q_values[-1], losses.gaussian_log_prob(taken_actions, mean_old, std_old))
        return SampledImprovementBatch(observations, actions, q_values[: self.n_action_samples], mean_old, std_old), taken

    def _taken_q_values(self, critic: SampledCritic | QNetwork, observations: PyTorchObs, actions: th.Tensor) -> th.Tensor:
        """
        :param critic: The online or the target critic
        :param observations: B states
        :param actions: The stored actions (Gaussian-space, or action indices), shape (B, action_dim)
        :return: Q(s, a), shape (B, 1)
        """
        if isinstance(self.actor_target, CategoricalActor):
            return critic(observations).gather(1, actions.long().reshape(-1, 1))
        return critic(observations, self.actor_target.squash(actions))[0]

    def _n_step_evaluation(self, replay_data: ReplayBufferSamples) -> PolicyEvaluation:
        """Expected-SARSA critic loss over (n-step) transitions (paper, Sec. 4, Eq. (13) with the traces cut)."""
        discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
        targets, _ = self._target_policy_values(replay_data.next_observations)
        target_q_values = losses.expected_sarsa_target(
            replay_data.rewards, replay_data.dones, discounts, targets.expected_q().unsqueeze(-1)
        )
        current_q_values = self._taken_q_values(self.critic, replay_data.observations, replay_data.actions)
        critic_loss = 0.5 * F.mse_loss(current_q_values, target_q_values)
        return PolicyEvaluation(critic_loss, current_q_values.detach().mean(), targets)

    def _retrace_evaluation(self, segments: SegmentSamples) -> PolicyEvaluation:
        """
        Retrace critic loss over trajectory segments (paper, Sec. 4, Eq. (13)). Every valid step of a segment is a
        regression target; the E-step and M-step run at the valid steps' next states.
        """
        n_segments, length = segments.rewards.shape
        observations = _flatten_time(segments.observations)
        next_observations = _flatten_time(segments.next_observations)
        actions = segments.actions.reshape(n_segments * length, -1)
        # Where step t + 1 is valid, s_{t+1} is both the next observation of step t and the observation of step t + 1,
        # so the one forward of the target networks at the next observations also scores a_{t+1} (Q'(s_{t+1}, a_{t+1})
        # and log π_old(a_{t+1}|s_{t+1})). Retrace reads neither at t = 0, nor at invalid steps.
        following_actions = th.cat([segments.actions[:, 1:], segments.actions[:, -1:]], dim=1).flatten(0, 1)
        targets, following = self._target_policy_values(next_observations, following_actions)
        assert following is not None
        with th.no_grad():
            target_q_values = retrace_targets(
                q_values=_delay(following.q_values.reshape(n_segments, length)),
                expected_next_q=targets.expected_q().reshape(n_segments, length),
                rewards=segments.rewards,
                terminations=segments.terminations,
                episode_ends=segments.episode_ends,
                valid=segments.valid,
                log_ratios=_delay(following.log_probs.reshape(n_segments, length)) - segments.behaviour_log_probs,
                gamma=self.gamma,
                lambda_=self.retrace_lambda,
            )
        valid = segments.valid.reshape(-1) > 0.5
        current_q_values = self._taken_q_values(self.critic, observations, actions).reshape(-1)[valid]
        critic_loss = 0.5 * F.mse_loss(current_q_values, target_q_values.reshape(-1)[valid])
        return PolicyEvaluation(critic_loss, current_q_values.detach().mean(), targets.select(valid))

    def _gaussian_improvement(self, batch: SampledImprovementBatch) -> tuple[th.Tensor, th.Tensor, dict[str, th.Tensor]]:
        """
        E-step (paper, Sec. 3.2) and M-step (Sec. 3.3, Appendix D.3) on sampled actions and their target Q-values.

        :param batch: States, N sampled actions per state, their Q-values and the target policy's statistics
        :return: The policy loss, the loss of the temperatures and multipliers, and detached diagnostics
        """
        # E-step: non-parametric improvement of the sampled actions, temperature from the convex dual. With action
        # penalisation (MO-MPO) a second objective, −‖a − clip(a)‖², re-weights the same samples with its own bound.
        q_values, epsilons = batch.q_values.unsqueeze(0), [self.epsilon]
        if self.action_penalty:
            assert self.epsilon_penalty is not None
            q_values = th.stack([batch.q_values, losses.action_penalty_q(batch.actions)])
            epsilons.append(self.epsilon_penalty)
        temperatures, dual_loss = self._e_step_temperatures(q_values, epsilons)
        objective_weights = losses.e_step_weights(q_values, temperatures[:, None, None])
        weights = objective_weights.sum(dim=0)
        diagnostics = {"temperature": temperatures[0].detach(), "kl_q": losses.sample_kl_to_old(objective_weights[0])}
        if self.action_penalty:
            diagnostics["temperature_penalty"] = temperatures[1].detach()

        # M-step: weighted maximum likelihood under the decoupled KL trust regions
        actor = cast(GaussianActor, self.actor)
        mean, std = actor.distribution_params(batch.observations)
        kl = losses.decoupled_gaussian_kl(batch.mean_old, batch.std_old, mean, std, per_dim=self.per_dim_constraints)
        alpha_mean, alpha_std = self.multipliers.alpha("mean"), self.multipliers.alpha("std")
        policy_loss = (
            losses.decoupled_m_step_loss(weights, batch.actions, mean, std, batch.mean_old, batch.std_old)
            + losses.lagrangian_penalty(alpha_mean, kl.mean)
            + losses.lagrangian_penalty(alpha_std, kl.std)
        )
        dual_loss = (
            dual_loss
            + losses.multiplier_loss(alpha_mean, self.epsilon_mean, kl.mean)
            + losses.multiplier_loss(alpha_std, self.epsilon_std, kl.std)
        )
        diagnostics.update(
            alpha_mean=alpha_mean.detach().mean(),
            alpha_std=alpha_std.detach().mean(),
            kl_mean=kl.mean.detach().mean(),
            kl_std=kl.std.detach().mean(),
            std_mean=std.detach().mean(),
        )
        return policy_loss, dual_loss, diagnostics

    def _categorical_improvement(
        self, batch: CategoricalImprovementBatch
    ) -> tuple[th.Tensor, th.Tensor, dict[str, th.Tensor]]:
        """
        Exact E-step over the action set (paper, Sec. 3.2, Eq. (8)-(9)) and M-step (Sec. 3.3, Eq. (12)) with one
        trust region KL(π_old || π) ≤ ``epsilon_policy`` on the categorical policy.

        :param batch: States, every action's target Q-value and the target policy's log-probabilities
        :return: The policy loss, the loss of the temperature and multiplier, and detached diagnostics
        """
        temperatures, dual_loss = self._e_step_temperatures(
            batch.q_values.T[None], [self.epsilon], batch.log_probs_old.T[None]
        )
        temperature = temperatures[0]
        weights = losses.categorical_e_step_weights(batch.q_values, batch.log_probs_old, temperature)

        log_probs = cast(CategoricalActor, self.actor).log_probs(batch.observations)
        kl = losses.categorical_kl(batch.log_probs_old, log_probs).mean()
        alpha = self.multipliers.alpha("policy")
        # Σ_a q(a|s) log π(a|s) is the weighted likelihood with the actions as the "samples" axis
        policy_loss = -losses.weighted_log_likelihood(weights.T, log_probs.T) + losses.lagrangian_penalty(alpha, kl)
        dual_loss = dual_loss + losses.multiplier_loss(alpha, self.epsilon_policy, kl)
        diagnostics = {
            "temperature": temperature.detach(),
            "kl_q": losses.categorical_kl(weights.log(), batch.log_probs_old).mean(),
            "alpha_policy": alpha.detach().mean(),
            "kl_policy": kl.detach(),
            # torch's entropy treats a zero probability as 0·log 0 = 0
            "entropy": th.distributions.Categorical(logits=log_probs.detach()).entropy().mean(),
        }
        return policy_loss, dual_loss, diagnostics

    def _e_step_temperatures(
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
        temperatures = self.multipliers.temperatures
        if self.temperature_update == "solve":
            epsilon = th.tensor(epsilons, dtype=q_values.dtype, device=q_values.device)
            temperatures = losses.solve_temperature(
                q_values, epsilon, log_prior, initial=temperatures, iterations=self.temperature_iterations
            )
            self.multipliers.store_temperatures(temperatures)
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

    def _clip_grad_norm(self, optimizer: th.optim.Optimizer) -> th.Tensor:
        parameters = [param for group in optimizer.param_groups for param in group["params"]]
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else float("inf")
        return th.nn.utils.clip_grad_norm_(parameters, max_norm).detach()

    def _raise_if_not_finite(self, quantities: dict[str, th.Tensor]) -> None:
        """Stop training, before any optimiser step, if a loss, gradient norm or multiplier is NaN or infinite."""
        values = th.stack(list(quantities.values()))
        finite = th.isfinite(values)
        if not bool(finite.all()):
            bad = [f"{name}={value.item()}" for (name, value), ok in zip(quantities.items(), finite, strict=True) if not ok]
            raise NonFiniteError(
                f"MPO: non-finite {', '.join(bad)} at gradient update {self._n_updates + 1} "
                f"(env step {self.num_timesteps}); no parameter was updated. Check the rewards and observations "
                "(e.g. normalise them with VecNormalize) or lower the learning rates."
            )

    def learn(
        self: SelfMPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "MPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfMPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        if self.keep_freed_memory_in_heap:
            keep_freed_blocks_in_heap(trim_threshold=256 * 2**20)
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "actor", "actor_target", "critic", "critic_target", "multipliers"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "actor.optimizer", "critic.optimizer", "multipliers", "multipliers_optimizer"]
        return state_dicts, []
