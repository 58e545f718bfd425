import io
import math
import pathlib
import warnings
from collections import defaultdict
from typing import Any, ClassVar, Literal, TypeVar, cast

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.type_aliases import (
    GymEnv,
    MaybeCallback,
    PyTorchObs,
    ReplayBufferSamples,
    Schedule,
    TensorDict,
    TrainFreq,
)
from stable_baselines3.common.utils import FloatSchedule, get_parameters_by_name, polyak_update, update_learning_rate
from stable_baselines3.dqn.policies import QNetwork

from sb3_mpo.common import checks
from sb3_mpo.common.allocator import keep_freed_blocks_in_heap
from sb3_mpo.common.buffers import (
    SegmentReplayBuffer,
    SegmentSamples,
    default_replay_buffer_class,
    replay_settings_problem,
    sample_mixed,
    truncate_newest_episodes,
)
from sb3_mpo.common.compilation import compile_if_possible
from sb3_mpo.common.precision import TargetPrecision, dtype_name, target_dtype
from sb3_mpo.mpo import health
from sb3_mpo.mpo.evaluation import CriticEvaluation, make_evaluation
from sb3_mpo.mpo.improvement import GREEDY_KL, LagrangeMultipliers, PolicyImprovement, make_improvement
from sb3_mpo.mpo.losses import PenaltyCost
from sb3_mpo.mpo.policies import (
    CategoricalActor,
    CnnPolicy,
    GaussianActor,
    MlpPolicy,
    MPOPolicy,
    MultiInputPolicy,
    SampledCritic,
)
from sb3_mpo.mpo.popart import PopArt

SelfMPO = TypeVar("SelfMPO", bound="MPO")
#: Constructor arguments that a loaded model's checks leave out: those it does not hold under their own names as given
#: (``policy``, ``train_freq``, ``stats_window_size``: held otherwise; ``env``, ``device``: wrapped or resolved), those
#: its buffer's set-up checks (``replay_buffer_class``, ``replay_buffer_kwargs``), and ``learning_rate``, which SB3's
#: idiom for a model loaded to act sets to 0 (``custom_objects={"learning_rate": 0.0, ...}``, as RL Zoo's ``enjoy``)
NOT_HELD = frozenset(
    (
        "policy",
        "train_freq",
        "stats_window_size",
        "env",
        "device",
        "replay_buffer_class",
        "replay_buffer_kwargs",
        "learning_rate",
    )
)
QTarget = Literal["n_step", "retrace"]
TemperatureUpdate = Literal["solve", "gradient"]
PolicyImprovementKind = Literal["nonparametric", "parametric"]


class IncompatibleParametersError(RuntimeError):
    """
    Raised when saved parameters do not fit the model they are loaded into: a setting that shapes the networks or the
    multipliers differs from the saved model's (a ``RuntimeError``, which SB3's ``load`` passes on as it is).
    """


class NonFiniteError(FloatingPointError):
    """
    Raised when a loss, gradient or multiplier becomes NaN or infinite (training stops with the model as it was before
    that update: no parameter, multiplier or running statistic moves), or when an environment hands over a non-finite
    observation, action or reward (refused before it is stored).
    """


def optimized_parameters(optimizers: list[th.optim.Optimizer]) -> list[th.nn.Parameter]:
    """The parameters the optimisers update, in their order."""
    return [param for optimizer in optimizers for group in optimizer.param_groups for param in group["params"]]


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
    :param learning_rate: learning rate for the Adam optimisers of the critic and (unless ``actor_learning_rate`` is
        set) the actor, it can be a function of the current progress remaining (from 1 to 0)
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
    :param replay_buffer_class: Replay buffer class to use. If ``None``, it will be automatically selected. With
        Retrace a :class:`~sb3_mpo.common.buffers.SegmentReplayBuffer` subclass; with ``q_target="n_step"`` any
        transition buffer, SB3's ``HerReplayBuffer`` included (with ``n_steps=1``: it samples single transitions)
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation.
    :param optimize_memory_usage: Enable a memory efficient variant of the replay buffer
    :param n_steps: With ``q_target="n_step"``: the critic target is the expected-SARSA n-step return
        (SB3's NStepReplayBuffer); ``n_steps=1`` is the 1-step TD target. Must be 1 with Retrace
    :param q_target: ``"retrace"`` (the default: Retrace over trajectory segments of the
        :class:`~sb3_mpo.common.buffers.SegmentReplayBuffer`, as in the paper) or ``"n_step"`` (expected-SARSA n-step
        return over transitions, for ``n_steps > 1`` or a replay buffer of your own); with Retrace, ``batch_size``
        still counts transitions (``ceil(batch_size / segment_length)`` segments). The default is the measured one:
        docs/results/critic_targets.md
    :param segment_length: Length L of the trajectory segments used by Retrace
    :param retrace_lambda: Trace decay λ of Retrace, c_k = λ·min(1, π(a_k|s_k) / b(a_k|s_k))
    :param n_action_samples: Number N of actions sampled per state for the E-step and the critic target
        (``Box`` only: with ``Discrete`` actions every action is enumerated)
    :param mixture_return_samples: With a mixture critic (``policy_kwargs`` ``critic_mixture``): returns Z drawn from the
        (target) critic's mixture at each of the N sampled next actions, so that its loss averages the likelihood of
        N·Z target returns per transition (Acme's ``policy_eval_num_val_samples``: 128). Must be 1 without a mixture
        critic
    :param mixture_quadrature_nodes: With a mixture critic: instead of drawing returns, take K points per component of
        each next action's mixture, a Gauss-Hermite rule whose weighted likelihood is a deterministic estimate of the
        same cross-entropy (N·M·K target returns per transition). ``None`` (the default) draws
        ``mixture_return_samples``
    :param epsilon: Bound ε on KL(q || π_old) in the E-step; with ``Box`` actions below log(``n_action_samples``), the
        most that KL can be over N samples
    :param epsilon_mean: Bound ε_μ on the mean half of the M-step trust region (``Box`` only)
    :param epsilon_std: Bound ε_Σ on the covariance half of the M-step trust region (``Box`` only)
    :param epsilon_policy: Bound on KL(π_old || π) in the M-step of a categorical policy (``Discrete`` only)
    :param epsilon_penalty: Bound on the KL of the action-penalty E-step (MO-MPO), used with the ``"clip"`` action
        bounding; ``None`` switches action penalisation off. The parametric improvement has no E-step: it adds the
        penalty to the advantage (in the critic's units), so there only ``None`` or not counts
    :param penalty_cost: The action penalty's objective as a function of the distance d = ‖a − clip(a)‖ of a sampled
        action to the box (:func:`~sb3_mpo.mpo.losses.action_penalty_q`): ``"squared_norm"`` (the default) −d²,
        ``"norm"`` −d, as DeepMind's MPO (Acme's losses) has it. Used wherever the action penalty is (``epsilon_penalty``
        set, the ``"clip"`` bounding)
    :param per_dim_constraints: One trust region (and multiplier) per action dimension rather than a joint one
        (``Box`` only)
    :param policy_improvement: ``"nonparametric"`` (the default): the E-step re-weights N samples of the target policy
        and the M-step fits the policy to them; ``"parametric"`` (``Box`` only): the policy maximises the expected
        advantage of its own reparameterised samples through the target critic, under the same trust regions
        (paper, Sec. 3.2; :class:`~sb3_mpo.mpo.improvement.ParametricGaussianImprovement`)
    :param parametric_samples: Reparameterised actions per state for each half (mean and covariance) of the parametric
        improvement's loss; ``None`` uses ``n_action_samples``. Its critic pass runs forward and backward over
        2·``parametric_samples`` actions per state, its largest cost (7x SAC's gradient step with the LayerNorm torso
        on HalfCheetah-v5 shapes at 20: docs/results/update_cost.md), and pathwise gradients need few samples (SAC
        uses one). Only with ``policy_improvement="parametric"``
    :param temperature_update: How the E-step's temperature η (and the action penalty's) is found: ``"solve"``
        minimises the convex dual on every batch (:func:`~sb3_mpo.mpo.losses.solve_temperature`), so that
        KL(q || π_old) = ε whatever the scale of the rewards; ``"gradient"`` takes one Adam step on the dual per update
        (``dual_learning_rate``), as DeepMind's and Tonic's implementations do, so η moves slowly under large rewards
    :param init_temperature: Initial temperature η (and initial temperature of the action penalty); with
        ``temperature_update="solve"`` only the value logged before the first update and the first solve's starting
        guess (the solve finds the same η from any)
    :param init_alpha_mean: Initial multiplier α_μ (with ``Discrete`` actions: the initial α of ``epsilon_policy``)
    :param init_alpha_std: Initial multiplier α_Σ
    :param dual_learning_rate: Learning rate of the Adam optimiser of the temperatures and multipliers
    :param actor_learning_rate: Learning rate of the actor's optimiser alone, a float or a schedule as
        ``learning_rate`` (``None``: ``learning_rate``, for the actor and the critic alike). Acme's MPO trains policy
        and critic at 1e-4; a critic that learns at a higher rate (CrossQ's 1e-3) need not drive the policy's steps
        too, which the M-step's trust regions bound only after the step (docs/algorithm.md)
    :param max_grad_norm: Clip the gradient norm of the actor and of the critic to this value (``None``: no clipping)
    :param target_update_interval: update the target networks every ``target_update_interval`` gradient steps
    :param value_normalization: Learn normalised values with PopArt (van Hasselt et al. 2016): the critic's targets
        are normalised by running estimates of their mean and standard deviation, and its output layer is rescaled
        whenever they move so that its values are kept; with the solved temperature, training is then the same at any
        reward scale (see :mod:`sb3_mpo.mpo.popart`)
    :param replay_fraction: Share of each batch drawn uniformly from replay, in (0, 1]; the rest is the newest data
        (the newest segments, or transitions), as a FIFO queue of the newest data that every batch reads in full
        (Acme's ``replay_fraction``; see :func:`~sb3_mpo.common.buffers.sample_mixed`). 1.0 (the default): pure replay
    :param compile_update: Compile the update's losses (policy evaluation and improvement: the target networks'
        forward over the sampled actions, the E-step and the M-step) with ``torch.compile``; the backward pass and the
        optimiser steps run as usual. The maths is the same (tested against the eager update on fixed batches), but
        the random draws of a compiled graph come from a different stream. Compiling takes tens of seconds at the first
        update and needs a C++ compiler on a CPU (without one, a warning says so and the update runs eagerly); the gain
        is measured in docs/results/update_cost.md
    :param target_precision: Floating-point type of the hidden layers' matrix products in the target critic's forward
        pass over the N sampled actions per state, the largest computation of an update (``Box`` actions):
        ``"float32"`` (the default), ``"bfloat16"``, or ``"auto"``: bfloat16 where the device multiplies bfloat16
        matrices natively (a CPU with AMX or AVX512-BF16, a CUDA GPU of compute capability 8.0 or above), float32
        elsewhere and with ``Discrete`` actions (:attr:`target_dtype` says which). The first layer, the activations, the
        output layer, the Q-values and every loss stay in float32; the critic's training is untouched, and so are the
        policy's gradients with the non-parametric improvement (the parametric one reads its 2·``parametric_samples``
        actions through the same pass, with gradient to the actions, so its gradients carry the bfloat16 roundings
        too). bfloat16 matrix products are fast on CPUs with AMX or AVX512-BF16 (recent Xeons) and on GPUs with
        bfloat16 support, and may be slower elsewhere; the Q-values then differ by a small fraction of their spread
        over the sampled actions (see docs/algorithm.md). A saved ``"auto"`` model resolves it again where it is loaded
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
    #: The Gaussian or categorical half of MPO (behaviour, target scoring, E-step and M-step), chosen in ``_setup_model``
    improvement: PolicyImprovement
    #: The critic's targets and loss (Retrace over segments, or n-step returns), chosen in ``_setup_model``
    evaluation: CriticEvaluation
    #: Step size β of the moving averages of PopArt's statistics (``value_normalization=True``)
    value_normalization_rate: ClassVar[float] = 3e-4
    #: Newton steps of the temperature solve per update (``temperature_update="solve"``), warm-started at the previous
    #: batch's temperature; see :func:`~sb3_mpo.mpo.losses.solve_temperature`
    temperature_iterations: int = 4
    #: On Linux (glibc), ``learn`` keeps freed blocks of up to 32 MiB in the C heap (and up to 256 MiB free at its top)
    #: instead of returning them to the system after every update, so the next update does not fault its large tensors
    #: in again (:mod:`sb3_mpo.common.allocator`): 1.3x faster updates on HalfCheetah-v5. Process-wide; set to False
    #: before ``learn`` to leave the C library's defaults alone.
    keep_freed_memory_in_heap: ClassVar[bool] = True
    #: Scale of the returns, ``mean |r| / (1 - γ)`` over the warm-up's rewards, above which the first update warns that the
    #: critic, which starts near 0, cannot follow them without ``value_normalization`` (docs/results/reward_scale.md)
    large_return_scale: ClassVar[float] = 1e4
    #: A mean policy standard deviation within this factor of ``min_std`` (and below halfway down to it from
    #: ``init_std``) counts as collapsed (warned once)
    collapsed_std_factor: ClassVar[float] = 2.0
    #: A mean Q-value beyond this factor times ``max |r| / (1 - γ)`` over the rewards in replay counts as diverged
    diverged_value_factor: ClassVar[float] = 2.0
    #: A share of a categorical critic's target mass outside its support, over one call's updates, above which it warns
    #: that the support does not cover the returns (warned once)
    mass_outside_limit: ClassVar[float] = 0.01
    #: Gradient steps between two checks of the critic against the rewards in replay (each reads the whole replay), and
    #: over which the KL constraints are judged for theirs
    health_check_interval: ClassVar[int] = 1000
    #: An M-step trust region whose KL's median over ``health_check_interval`` updates lies above this factor of its
    #: bound counts as not held (warned once each; with ``per_dim_constraints`` the KL of the action dimension furthest
    #: out). Its multiplier holds it loosely: on HalfCheetah-v5 with the MuJoCo entry (seed 0), after the first 1000
    #: updates, the largest dimension's ``epsilon_std`` KL had medians of 1-14x its bound over each 1000 updates (the
    #: mean over dimensions 1-8x), and one of the 811 updates logged in the stored MPO runs went past 30x (docs/algorithm.md)
    trust_region_bound_factor: ClassVar[float] = 30.0
    #: One ``train()`` call whose M-step KL exceeds this factor of its bound counts as an excursion out of the trust
    #: region (warned once each): on HalfCheetah-v5 (the MuJoCo entry, seed 0) single updates stayed within 47x (the
    #: largest dimension's ``epsilon_std`` KL) and 4.2x (``epsilon_mean``'s) over updates 1000-8000; seeds 0 and 2 each
    #: had one excursion between updates 7000 and 8100, to over 100000x and 300x
    trust_region_excursion_factor: ClassVar[float] = 100.0
    #: An E-step whose KL averages above or below its bound by more than this factor over ``health_check_interval``
    #: updates misses it (warned once): a solved or a learned temperature meets it within a few percent there
    e_step_bound_factor: ClassVar[float] = 3.0
    actor: GaussianActor | CategoricalActor
    actor_target: GaussianActor | CategoricalActor
    critic: SampledCritic | QNetwork
    actor_lr_schedule: Schedule
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
        mixture_return_samples: int = 1,
        mixture_quadrature_nodes: int | None = None,
        epsilon: float = 0.1,
        epsilon_mean: float = 1e-3,
        epsilon_std: float = 1e-5,
        epsilon_policy: float = 1e-2,
        epsilon_penalty: float | None = 1e-3,
        penalty_cost: PenaltyCost = "squared_norm",
        per_dim_constraints: bool = True,
        policy_improvement: PolicyImprovementKind = "nonparametric",
        parametric_samples: int | None = None,
        temperature_update: TemperatureUpdate = "solve",
        init_temperature: float = 1.0,
        init_alpha_mean: float = 1.0,
        init_alpha_std: float = 10.0,
        dual_learning_rate: float = 1e-2,
        actor_learning_rate: float | Schedule | None = None,
        max_grad_norm: float | None = 40.0,
        target_update_interval: int = 1,
        replay_fraction: float = 1.0,
        value_normalization: bool = False,
        compile_update: bool = False,
        target_precision: TargetPrecision = "float32",
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
            mixture_return_samples=mixture_return_samples,
            mixture_quadrature_nodes=mixture_quadrature_nodes,
            epsilon=epsilon,
            epsilon_mean=epsilon_mean,
            epsilon_std=epsilon_std,
            epsilon_policy=epsilon_policy,
            epsilon_penalty=epsilon_penalty,
            penalty_cost=penalty_cost,
            policy_improvement=policy_improvement,
            parametric_samples=parametric_samples,
            temperature_update=temperature_update,
            init_temperature=init_temperature,
            init_alpha_mean=init_alpha_mean,
            init_alpha_std=init_alpha_std,
            dual_learning_rate=dual_learning_rate,
            actor_learning_rate=actor_learning_rate,
            max_grad_norm=max_grad_norm,
            target_update_interval=target_update_interval,
            replay_fraction=replay_fraction,
            value_normalization=value_normalization,
            compile_update=compile_update,
            target_precision=target_precision,
            learning_starts=learning_starts,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            per_dim_constraints=per_dim_constraints,
            stats_window_size=stats_window_size,
            policy_kwargs=policy_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            verbose=verbose,
            seed=seed,
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
        # without an environment (a model about to be loaded) the space is not known yet; the others have no E-step
        if isinstance(getattr(self, "action_space", None), spaces.Box) and policy_improvement == "nonparametric":
            self._check_sampled_bounds(n_action_samples, epsilon=epsilon, epsilon_penalty=epsilon_penalty)

        self.q_target = q_target
        self.segment_length = segment_length
        self.retrace_lambda = retrace_lambda
        self.n_action_samples = n_action_samples
        self.mixture_return_samples = mixture_return_samples
        self.mixture_quadrature_nodes = mixture_quadrature_nodes
        self.epsilon = epsilon
        self.epsilon_mean = epsilon_mean
        self.epsilon_std = epsilon_std
        self.epsilon_policy = epsilon_policy
        self.epsilon_penalty = epsilon_penalty
        self.penalty_cost = penalty_cost
        self.per_dim_constraints = per_dim_constraints
        self.policy_improvement = policy_improvement
        self.parametric_samples = parametric_samples
        self.temperature_update = temperature_update
        self.init_temperature = init_temperature
        self.init_alpha_mean = init_alpha_mean
        self.init_alpha_std = init_alpha_std
        self.dual_learning_rate = dual_learning_rate
        self.actor_learning_rate = actor_learning_rate
        self.max_grad_norm = max_grad_norm
        self.target_update_interval = target_update_interval
        self.replay_fraction = replay_fraction
        self.value_normalization = value_normalization
        self.compile_update = compile_update
        self.target_precision = target_precision
        self.value_normalizer: PopArt | None = None
        self.multipliers: LagrangeMultipliers
        self.multipliers_optimizer: th.optim.Adam
        # The KL constraints of each train() call since the last health check; the judged calls whose M-step KL
        # exceeded trust_region_excursion_factor times its bound, by constraint, since the model's first update; and the
        # largest KL of a judged call in multiples of its bound (all saved with the model, so that a resumed model judges
        # and counts as one trained in one go; logged as train/<constraint>_excursions and train/<constraint>_peak_ratio)
        self._kl_window = health.ConstraintWindow(start=0)
        self._kl_excursions: dict[str, int] = {}
        self._kl_peak_ratios: dict[str, float] = {}

        # SB3's load builds the model without setting it up (its constructor's defaults), then sets the saved settings,
        # updated by custom_objects: _setup_model checks those as this constructor checked its arguments
        self._settings_checked = _init_setup_model
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
        policy_kwargs = arguments["policy_kwargs"] or {}
        distributional = any(policy_kwargs.get(key) is not None for key in ("critic_support", "critic_mixture"))
        batch_renorm = bool(policy_kwargs.get("batch_renorm", False))
        relations = [
            ("buffer_size", arguments["buffer_size"] >= batch_size, f"an integer >= batch_size={batch_size}"),
            (
                "n_steps",
                arguments["q_target"] != "retrace" or n_steps == 1,
                "1 with q_target='retrace' (the default); pass q_target='n_step' for n-step returns",
            ),
            (
                "q_target",
                arguments["q_target"] == "n_step" or not distributional,
                "'n_step' with a distributional critic (policy_kwargs critic_support or critic_mixture): Retrace's "
                "per-step corrections of expected values have no distributional form here",
            ),
            (
                "mixture_return_samples",
                arguments["mixture_return_samples"] == 1 or policy_kwargs.get("critic_mixture") is not None,
                "1 without a mixture critic (policy_kwargs critic_mixture), whose return samples it counts",
            ),
            (
                "mixture_quadrature_nodes",
                arguments["mixture_quadrature_nodes"] is None
                or (policy_kwargs.get("critic_mixture") is not None and arguments["mixture_return_samples"] == 1),
                "None without a mixture critic (policy_kwargs critic_mixture), and with mixture_return_samples=1 (its "
                "points replace the draws)",
            ),
            (
                "parametric_samples",
                arguments["parametric_samples"] is None or arguments["policy_improvement"] == "parametric",
                "None unless policy_improvement='parametric' (the non-parametric improvement draws no reparameterised "
                "actions)",
            ),
            (
                "value_normalization",
                not (arguments["value_normalization"] and distributional),
                "False with a distributional critic (policy_kwargs critic_support or critic_mixture), whose outputs "
                "PopArt does not rescale",
            ),
            (
                "value_normalization",
                not (arguments["value_normalization"] and batch_renorm),
                "False with policy_kwargs batch_renorm=True, whose critic scores the stored pairs before PopArt would "
                "rescale its output layer",
            ),
            (
                "policy_improvement",
                arguments["policy_improvement"] != "parametric" or not batch_renorm,
                "'nonparametric' with policy_kwargs batch_renorm=True (the parametric loss reads a target critic, "
                "which that critic does not have)",
            ),
            (
                "compile_update",
                not (arguments["compile_update"] and batch_renorm),
                "False with policy_kwargs batch_renorm=True (its update is not compiled)",
            ),
            (
                "optimize_memory_usage",
                not (arguments.get("optimize_memory_usage") and arguments["q_target"] == "n_step" and n_steps > 1),
                f"False with n-step returns (q_target='n_step', n_steps={n_steps}): SB3's NStepReplayBuffer does not "
                "store observations that way",
            ),
        ]
        for name, ok, accepted in relations:
            if not ok:
                raise ValueError(f"{owner}: {name}={arguments[name]!r} is invalid, expected {accepted}")

    def _check_held_settings(self) -> None:
        """
        The constructor's checks (:meth:`_check_arguments`, :meth:`_check_sampled_bounds`) on the settings the model
        holds: those of a model that ``MPO.load`` built are the saved ones, updated by ``custom_objects`` and by the
        keyword arguments of ``load`` (as RL Zoo passes an entry's hyperparameters when it continues training), which
        the constructor never saw.

        :raises ValueError: naming the first bad setting, its value and what is accepted
        """
        held = {name: getattr(self, name) for name in checks.constructor_parameters(type(self)) if name not in NOT_HELD}
        if held["policy_kwargs"]:  # saved as JSON, which gives tuples back as lists
            held["policy_kwargs"] = checks.tuples_from_json(
                held["policy_kwargs"], checks.constructor_parameters(self.policy_class)
            )
        self._check_arguments(
            **held, policy=self.policy_class, train_freq=self._train_freq_as_given(), stats_window_size=self._stats_window_size
        )
        if isinstance(self.action_space, spaces.Box) and self.policy_improvement == "nonparametric":
            self._check_sampled_bounds(self.n_action_samples, epsilon=self.epsilon, epsilon_penalty=self.epsilon_penalty)

    def _train_freq_as_given(self) -> int | tuple[int, str]:
        """:return: ``train_freq`` as the constructor takes it (SB3 makes it a ``TrainFreq`` when it sets the model up)"""
        if isinstance(self.train_freq, TrainFreq):
            return self.train_freq.frequency, self.train_freq.unit.value
        return self.train_freq

    def _check_environment_settings(self) -> None:
        """
        Refuse settings that the environment rules out, which SB3 would meet as an ``AttributeError`` while building the
        policy or an assertion while collecting experience.

        :raises ValueError: for ``MultiInputPolicy`` without Dict observations, or training per episode with several
            environments
        """
        if issubclass(self.policy_class, MultiInputPolicy) and not isinstance(self.observation_space, spaces.Dict):
            raise ValueError(
                f"MPO: policy=MultiInputPolicy is invalid with the observation space {self.observation_space}, expected "
                "a Dict observation space; use MlpPolicy (or CnnPolicy for images)"
            )
        train_freq = self._train_freq_as_given()
        if isinstance(train_freq, tuple) and train_freq[1] == "episode" and self.n_envs > 1:
            raise ValueError(
                f"MPO: train_freq={train_freq!r} is invalid with {self.n_envs} environments, expected a frequency in steps "
                "(an int, or (n, 'step')): SB3 trains per episode with one environment only"
            )

    @staticmethod
    def _check_sampled_bounds(n_action_samples: int, **bounds: float | None) -> None:
        """
        Refuse an E-step bound that cannot bind. Over N sampled actions the weights' KL from π_old's (uniform over its
        own samples) is log N − H(q) ≤ log N, reached only by weights on one sample: a bound at or above log N holds for
        every temperature, which then falls to its floor, and the E-step turns greedy.

        :param n_action_samples: The actions sampled per state (N)
        :param bounds: The E-step's KL bounds by argument name (None: that E-step does not run)
        :raises ValueError: naming the bound, N and log N
        """
        limit = math.log(n_action_samples)
        for name, bound in bounds.items():
            if bound is not None and bound >= limit:
                raise ValueError(
                    f"MPO: {name}={bound!r} is invalid with n_action_samples={n_action_samples}, expected a float below "
                    f"log({n_action_samples}) = {limit:.3f}: over N sampled actions the E-step's KL(q‖π_old) is at most "
                    f"log N, so this bound never binds and the temperature falls to its floor (a greedy E-step); lower "
                    f"{name} or sample more actions"
                )

    @staticmethod
    def _check_action_space(action_space: spaces.Space) -> None:
        """
        Refuse the action spaces MPO cannot act in, saying what it accepts.

        :param action_space: The environment's action space
        :raises ValueError: for a space other than a bounded Box of one dimension or a Discrete space of at least 2
            actions from 0
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
        if len(action_space.shape) != 1:
            raise ValueError(
                f"MPO needs a Box action space of one dimension (a vector of actions), got {action_space} of shape "
                f"{action_space.shape}: wrap the environment in a gymnasium.ActionWrapper whose action_space is the "
                f"flat Box of {int(np.prod(action_space.shape))} actions and whose action(a) reshapes a to "
                f"{action_space.shape}"
            )
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            raise ValueError(
                f"MPO needs a bounded Box action space (finite low and high) to map the policy into it, got {action_space}"
            )
        empty = np.argwhere(~(action_space.low < action_space.high))
        if len(empty) > 0:
            dimensions = [int(index[0]) for index in empty]
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
        buffer where n-step targets sample transitions, or another observation or action space (another environment),
        ``segment_length``, ``n_steps``, n-step ``gamma``, ``handle_timeout_termination`` or number of environments.

        :param path: Path to the pickled replay buffer
        :param truncate_last_traj: End the newest stored episode of each environment at the buffer's newest step (a
            time-limit truncation), so that no n-step return or segment joins it to what the environments do next;
            False only where their next steps continue it (SB3 reads it for a ``HerReplayBuffer``; MPO for every buffer)
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
                "replay buffer; load this one into a model built with the settings and environment it was saved with."
            )
        if truncate_last_traj:
            assert self.replay_buffer is not None
            truncate_newest_episodes(self.replay_buffer)

    def _setup_lr_schedule(self) -> None:
        super()._setup_lr_schedule()
        # the actor's rate, kept as a schedule of its own even when it is learning_rate's, so that train() reads one
        self.actor_lr_schedule = (
            self.lr_schedule if self.actor_learning_rate is None else FloatSchedule(self.actor_learning_rate)
        )

    def _setup_model(self) -> None:
        if not self._settings_checked:
            self._check_held_settings()
            self._settings_checked = True
        self._check_environment_settings()
        problem = replay_settings_problem(
            self.q_target,
            self.n_steps,
            self.segment_length,
            self.gamma,
            self.replay_buffer_class,
            self.replay_buffer_kwargs,
            self.observation_space,
        )
        if problem is not None:
            raise ValueError(f"MPO: {problem}")
        buffer_class = default_replay_buffer_class(
            self.q_target, self.n_steps, self.replay_buffer_class, self.observation_space
        )
        label = "'replay_buffer_kwargs' key {key!r}"
        checks.check_class_kwargs(self.replay_buffer_kwargs, buffer_class, checks.SET_FOR_REPLAY_BUFFER, label)
        # The buffer asked for, not the class and arguments that MPO and SB3 resolve it to (which take segment_length,
        # n_steps and gamma from MPO's arguments), is what the model keeps and saves: a load whose custom_objects change
        # those arguments resolves the buffer afresh, as the constructor would
        requested = self.replay_buffer_class, dict(self.replay_buffer_kwargs)
        self.replay_buffer_kwargs = dict(self.replay_buffer_kwargs)  # SB3 adds n_steps and gamma: not to the caller's
        ignored_n_steps = None
        if self.q_target == "retrace":
            self.replay_buffer_class = buffer_class
            self.replay_buffer_kwargs = {"segment_length": self.segment_length, **self.replay_buffer_kwargs}
        elif issubclass(buffer_class, NStepReplayBuffer) and self.replay_buffer_class is not None:
            # An n-step buffer asked for by class computes the returns the critic learns from: it takes MPO's gamma
            # and n_steps where its arguments leave them out (not the class's own defaults), so SB3's warning that a
            # custom class ignores n_steps does not hold
            self.replay_buffer_kwargs = {"gamma": self.gamma, "n_steps": self.n_steps, **self.replay_buffer_kwargs}
            ignored_n_steps = r"`n_steps=\d+` is ignored because a custom `replay_buffer_class`"
        with warnings.catch_warnings():
            if ignored_n_steps is not None:
                warnings.filterwarnings("ignore", message=ignored_n_steps)
            super()._setup_model()
        self.replay_buffer_class, self.replay_buffer_kwargs = requested
        self._check_mixed_replay()
        self._create_aliases()
        # the policy builds both optimisers at learning_rate's first value; train() sets each rate before every update
        update_learning_rate(self.actor.optimizer, self.actor_lr_schedule(1))
        # BatchNorm's running statistics (a features extractor's), which the target networks copy (SB3 GH issue #996)
        self.batch_norm_stats = get_parameters_by_name(self.critic, ["running_"])
        self.batch_norm_stats_target = get_parameters_by_name(self.critic_target, ["running_"])
        self.actor_batch_norm_stats = get_parameters_by_name(self.actor, ["running_"])
        self.actor_batch_norm_stats_target = get_parameters_by_name(self.actor_target, ["running_"])
        # The Gaussian or categorical improvement, and the n-step or Retrace evaluation, chosen once
        self.improvement = make_improvement(self)
        self.evaluation = make_evaluation(self)
        self._warned: set[str] = set()  # the health warnings given (_warn_once), once per kind
        # Resolve "auto" for this device now: a compiled update can read the answer but not ask the hardware
        resolved = dtype_name(self.target_dtype)
        if self.target_precision == "auto" and self.verbose >= 1:
            print(f"MPO: target_precision='auto' computes the target pass in {resolved} on {self.device}")
        self.multipliers = LagrangeMultipliers(
            init_temperatures=(self.init_temperature,) * self.improvement.n_objectives,
            alphas=self.improvement.trust_regions(),
            learn_temperatures=self.temperature_update == "gradient",
        ).to(self.device)
        self.multipliers_optimizer = th.optim.Adam(self.multipliers.parameters(), lr=self.dual_learning_rate, fused=True)
        if self.value_normalization:
            self.value_normalizer = PopArt(self.value_normalization_rate).to(self.device)
        self._compute_losses = (
            compile_if_possible(self._losses, self.device, "compile_update=True") if self.compile_update else self._losses
        )
        # Loading copies into these same tensors (load_state_dict), so the list made here stays the model's own
        self.written_by_losses = self._state_written_by_losses()

    def _check_mixed_replay(self) -> None:
        """
        :raises ValueError: when ``replay_fraction`` < 1 with a buffer whose ``sample`` does more than draw data (e.g.
            SMM's, which updates its models on every sample): the newest data would bypass it
        """
        plain_samplers = (ReplayBuffer.sample, DictReplayBuffer.sample, SegmentReplayBuffer.sample)
        if self.replay_fraction < 1.0 and getattr(type(self.replay_buffer), "sample", None) not in plain_samplers:
            raise ValueError(
                f"MPO: replay_fraction={self.replay_fraction!r} is invalid with replay_buffer_class="
                f"{type(self.replay_buffer).__name__}, whose sample() is its own; expected 1.0 with it, or a buffer of "
                "SB3's or a SegmentReplayBuffer"
            )

    def _create_aliases(self) -> None:
        self.actor = self.policy.actor
        self.actor_target = self.policy.actor_target
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target

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
        action, buffer_action, log_prob = self.improvement.behaviour(None if warm_up else self._last_obs_tensor(), n_envs)
        if isinstance(self.replay_buffer, SegmentReplayBuffer):
            self.replay_buffer.stage_behaviour_log_prob(log_prob)
        return action, buffer_action

    def _last_obs_tensor(self) -> PyTorchObs:
        assert self._last_obs is not None, "self._last_obs was not set"
        return self.policy.obs_to_tensor(self._last_obs)[0]

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.critic.optimizer)
        actor_learning_rate = self.actor_lr_schedule(self._current_progress_remaining)
        update_learning_rate(self.actor.optimizer, actor_learning_rate)
        if self.actor_learning_rate is not None:
            self.logger.record("train/actor_learning_rate", actor_learning_rate)
        # a loaded model's optimiser state carries the saved rate: custom_objects={"dual_learning_rate": ...} sets it
        update_learning_rate(self.multipliers_optimizer, self.dual_learning_rate)
        if self.q_target == "retrace":
            # batch_size counts transitions: as many segments as hold about that many
            batch_size = max(1, -(-batch_size // self.segment_length))

        if self._n_updates == 0 and not self.value_normalization:  # PopArt's targets are normalised, whatever the scale
            rewards = self._critic_rewards()
            self._warn_once(
                "large_returns",
                None if rewards is None else health.large_returns(rewards, self.gamma, self.large_return_scale),
            )
        stats: dict[str, list[th.Tensor]] = defaultdict(list)
        for _ in range(gradient_steps):
            replay_data = sample_mixed(self.replay_buffer, batch_size, self.replay_fraction, self._vec_normalize_env)  # type: ignore[arg-type]
            for key, value in self._gradient_step(replay_data).items():
                stats[key].append(value)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        means = {key: th.stack(values).mean().item() for key, values in stats.items()}
        for key, mean in means.items():
            self.logger.record(f"train/{key}", mean)
        self._report_health(means, gradient_steps)

    def _critic_rewards(self) -> np.ndarray | None:
        """
        :return: The rewards in replay as the critic sees them (after VecNormalize; PopArt's values are compared in these
            units, as the logged ``q_mean`` is); None where nothing is stored, where the buffer relabels the rewards it
            samples (SMM), or where no discounted horizon bounds the returns (gamma 1)
        """
        rewards = getattr(self.replay_buffer, "rewards", None)
        relabelled = getattr(self.replay_buffer, "relabels_rewards", False)
        if rewards is None or relabelled or self.gamma >= 1.0:
            return None
        stored = rewards if self.replay_buffer.full else rewards[: self.replay_buffer.pos]  # type: ignore[union-attr]
        if stored.size == 0:
            return None
        return stored if self._vec_normalize_env is None else self._vec_normalize_env.normalize_reward(stored)

    def _report_health(self, means: dict[str, float], gradient_steps: int) -> None:
        """
        Warn of what would otherwise fail silently (:mod:`sb3_mpo.mpo.health`), once per kind: a Gaussian policy whose
        standard deviation has collapsed to ``min_std`` and a categorical critic whose targets leave its support, after
        every call; every ``health_check_interval`` updates, a critic whose mean value lies beyond any return of the
        rewards in replay (it reads the whole replay) and a KL constraint that missed its bound over those updates.

        :param means: The diagnostics of the last call's gradient steps, averaged
        :param gradient_steps: How many gradient steps that call took
        """
        if "std_mean" in means:
            actor = cast(GaussianActor, self.actor)
            message = health.collapsed_exploration(
                means["std_mean"], actor.min_std, actor.init_std, self.collapsed_std_factor, self.num_timesteps
            )
            self._warn_once("collapsed_exploration", message)
        # only past the limit, and once, read the replay's rewards for the message
        if means.get("mass_outside", 0.0) > self.mass_outside_limit and "returns_outside_support" not in self._warned:
            support = cast(tuple[float, float], self.policy.critic_support)
            message = health.returns_outside_support(
                means["mass_outside"], support, self.mass_outside_limit, self.num_timesteps, self._critic_rewards(), self.gamma
            )
            self._warn_once("returns_outside_support", message)
        bounds = self.improvement.bounds()
        judged = (bounds.keys() | {GREEDY_KL, "actor_grad_norm"}) & means.keys()
        self._kl_window.add({key: means[key] for key in judged}, gradient_steps, self._n_updates, self.num_timesteps)
        judged_call = self._kl_window.start > 0  # the model's first interval is not judged
        for key, (_, bound) in self._trust_region_bounds(bounds).items():
            if key not in means:
                continue
            outside = judged_call and means[key] > self.trust_region_excursion_factor * bound
            self._kl_excursions[key] = self._kl_excursions.get(key, 0) + int(outside)
            self.logger.record(f"train/{key}_excursions", self._kl_excursions[key])
            if judged_call:
                self._kl_peak_ratios[key] = max(self._kl_peak_ratios.get(key, 0.0), means[key] / bound)
                self.logger.record(f"train/{key}_peak_ratio", self._kl_peak_ratios[key])
        interval = self.health_check_interval
        if self._n_updates // interval == (self._n_updates - gradient_steps) // interval:
            return
        self._check_kl_bounds()
        if "diverged_critic" not in self._warned:
            rewards = self._critic_rewards()
            if rewards is not None:
                message = health.diverged_critic(
                    means["q_mean"], rewards, self.gamma, self.diverged_value_factor, self.num_timesteps
                )
                self._warn_once("diverged_critic", message)

    def _check_kl_bounds(self) -> None:
        """
        Warn of a KL constraint (:meth:`~sb3_mpo.mpo.improvement.PolicyImprovement.bounds`) that missed its bound since
        the last check: an M-step trust region that its multiplier does not hold (its median KL above
        ``trust_region_bound_factor`` times the bound) or, where it does, that the policy left by far for a few updates
        (one call's KL above ``trust_region_excursion_factor`` times it), or an E-step that does not re-weight the
        actions as its bound asks (its mean KL off by ``e_step_bound_factor``). Then start the next window. The model's
        first ``health_check_interval`` updates are not judged: the multipliers start from their initial values there,
        not from ones that fit the constraints (Pendulum-v1: ``epsilon_std``'s KL averages 14x its bound over the first
        1000 updates, then 1-5x).
        """
        window, step = self._kl_window, self.num_timesteps
        self._kl_window = health.ConstraintWindow(start=self._n_updates)
        if window.start == 0:  # the model's first interval
            return
        bounds = self.improvement.bounds()
        if "kl_q" in bounds and "kl_q" in window.values:
            solved = self.temperature_update == "solve"
            greedy = window.mean(GREEDY_KL) if GREEDY_KL in window.values else None
            kl, epsilon, factor = window.mean("kl_q"), bounds["kl_q"][1], self.e_step_bound_factor
            self._warn_once(
                "kl_bound_kl_q", health.e_step_off_bound(kl, epsilon, factor, window.n_updates, step, solved, greedy)
            )
        # one trust region per action dimension (per_dim_constraints): the messages name the one furthest out
        per_dimension = max(n for _, n in self.improvement.trust_regions().values()) > 1
        for key, (parameter, bound) in self._trust_region_bounds(bounds).items():
            if key not in window.values:
                continue
            median, factor = window.median(key), self.trust_region_bound_factor
            loose = health.loose_trust_region(median, parameter, bound, factor, window.n_updates, step, per_dimension)
            self._warn_once(f"kl_bound_{key}", loose)
            if loose is not None:  # outside at most updates: that some are far outside says nothing more
                continue
            call = window.peak(key)
            excursion = health.trust_region_excursion(
                window.values[key][call],
                median,
                parameter,
                bound,
                self.trust_region_excursion_factor,
                window.updates[call],
                window.env_steps[call],
                window.values["actor_grad_norm"][call],
                per_dimension,
            )
            self._warn_once(f"kl_excursion_{key}", excursion)

    @staticmethod
    def _trust_region_bounds(bounds: dict[str, tuple[str, float]]) -> dict[str, tuple[str, float]]:
        """
        :param bounds: The improvement's KL constraints (:meth:`~sb3_mpo.mpo.improvement.PolicyImprovement.bounds`)
        :return: Those of the M-step, each held by a Lagrange multiplier (the E-step's ``kl_q`` is met by its
            temperature instead)
        """
        return {key: bound for key, bound in bounds.items() if key != "kl_q"}

    def _warn_once(self, kind: str, message: str | None) -> None:
        """
        :param kind: What the message is about: each kind warns once per model (and again after loading)
        :param message: The warning, or None when there is nothing to say
        """
        if message is not None and kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, stacklevel=3)

    def _gradient_step(self, replay_data: ReplayBufferSamples | SegmentSamples) -> dict[str, th.Tensor]:
        """
        One update of critic, policy and multipliers. Policy evaluation and improvement share one forward pass of the
        target networks at the next states of the batch.

        :param replay_data: A batch of transitions (n-step) or of trajectory segments (Retrace)
        :return: Detached diagnostics for the logger
        """
        written = self.written_by_losses
        before = [tensor.clone() for tensor in written]
        critic_loss, policy_loss, dual_loss, diagnostics = self._compute_losses(replay_data)

        # The three losses touch disjoint parameters: one backward pass serves all of them
        optimizers = [self.critic.optimizer, self.actor.optimizer, self.multipliers_optimizer]
        for optimizer in optimizers:
            optimizer.zero_grad()
        self._backward(critic_loss + policy_loss + dual_loss)
        self._average_gradients(optimizers)
        checked = {
            "critic_loss": critic_loss.detach(),
            "actor_loss": policy_loss.detach(),
            "dual_loss": dual_loss.detach(),
            "critic_grad_norm": self._clip_grad_norm(self.critic.optimizer),
            "actor_grad_norm": self._clip_grad_norm(self.actor.optimizer),
            **diagnostics,
        }
        try:
            self._raise_if_not_finite(checked)
        except NonFiniteError:
            with th.no_grad():
                for tensor, value in zip(written, before, strict=True):
                    tensor.copy_(value)
            raise
        for optimizer in optimizers:
            optimizer.step()

        self._n_updates += 1
        if self._n_updates % self.target_update_interval == 0:
            if not self.policy.batch_renorm:  # CrossQ's critic has no target network: nothing reads the copy
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
            polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
            polyak_update(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)
        return checked

    def _state_written_by_losses(self) -> list[th.Tensor]:
        """
        The tensors that computing the losses updates in place, before any optimiser step: the networks' running
        statistics (BatchRenorm's, a features extractor's BatchNorm), the solved temperatures and, with PopArt, its
        statistics and the critics' output layers, which it rescales. A non-finite update restores them, so that the
        model stays as it was before that update.
        """
        written = [*self.policy.buffers(), *self.multipliers.buffers()]
        if self.value_normalizer is not None:
            layers = self.evaluation.normalised_layers()
            written += [*self.value_normalizer.buffers(), *(tensor for layer in layers for tensor in layer.parameters())]
        return [tensor.detach() for tensor in written]

    def _losses(
        self, replay_data: ReplayBufferSamples | SegmentSamples
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, dict[str, th.Tensor]]:
        """
        The pure-tensor half of a gradient step, which ``compile_update`` compiles: policy evaluation, then the E-step
        and M-step on the batch it scored.

        :param replay_data: A batch of transitions (n-step) or of trajectory segments (Retrace)
        :return: The critic's loss, the policy's loss, the loss of the temperatures and multipliers, and detached
            diagnostics (the E-step's KL, the multipliers, the critic's mean value, ...)
        """
        evaluation = self.evaluation.evaluate(replay_data)
        policy_loss, dual_loss, diagnostics = self.improvement.improve(evaluation.improvement)
        diagnostics = {**diagnostics, **(evaluation.diagnostics or {}), "q_mean": evaluation.q_mean}
        return evaluation.critic_loss, policy_loss, dual_loss, diagnostics

    def _backward(self, loss: th.Tensor) -> None:
        """
        The backward pass of the update's summed losses (data-parallel training runs it where a lost worker is reported).

        :param loss: The critic's, the policy's and the multipliers' losses, summed
        """
        loss.backward()

    def _average_gradients(self, optimizers: list[th.optim.Optimizer]) -> None:
        """
        Average the gradients of the optimisers' parameters over the workers of data-parallel training, after the
        backward pass (:class:`~sb3_mpo.distributed.DistributedMPO`); a single process has nothing to average.

        :param optimizers: The optimisers about to step, in the same order on every worker
        """

    def _average_over_workers(self, tensors: list[th.Tensor]) -> None:
        """
        Replace each tensor, in place, by its mean over the workers of data-parallel training (the gradients after the
        backward pass, the solved temperatures): :class:`~sb3_mpo.distributed.DistributedMPO` all-reduces them. A
        single process is the only worker, so here nothing changes.

        :param tensors: The tensors, in the same order on every worker
        """

    def _clip_grad_norm(self, optimizer: th.optim.Optimizer) -> th.Tensor:
        parameters = optimized_parameters([optimizer])
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
                f"(env step {self.num_timesteps}); nothing of the model was updated. Check the rewards and observations "
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
        if (reset_num_timesteps or self._last_obs is None) and self.replay_buffer is not None:
            # SB3 resets the environments now: the newest stored episodes end here, so that no n-step return (whose
            # buffer, SB3's, does not look for the break) or segment joins them to the new episodes
            truncate_newest_episodes(self.replay_buffer)
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    @property
    def target_dtype(self) -> th.dtype:
        """The type of the hidden layers' matrix products in the target pass: ``target_precision`` resolved here."""
        return target_dtype(self.target_precision, self.device, sampled=isinstance(self.action_space, spaces.Box))

    def _excluded_save_params(self) -> list[str]:
        # Rebuilt by _setup_model: the networks' aliases, the halves of the update, the (compiled) losses, the lists of
        # the networks' tensors that an update reads or restores, and the health warnings given
        excluded = ["actor", "actor_target", "critic", "critic_target", "multipliers", "improvement", "evaluation"]
        excluded += ["_compute_losses", "value_normalizer", "written_by_losses"]
        excluded += ["batch_norm_stats", "batch_norm_stats_target", "actor_batch_norm_stats", "actor_batch_norm_stats_target"]
        excluded += ["_warned", "actor_lr_schedule"]  # a loaded model warns again; _setup_lr_schedule makes the schedule
        excluded += ["_settings_checked"]  # a loaded model's settings are checked when it is set up
        return [*super()._excluded_save_params(), *excluded]

    def set_parameters(
        self, load_path_or_dict: str | TensorDict, exact_match: bool = True, device: th.device | str = "auto"
    ) -> None:
        """
        SB3's ``set_parameters``, with an error that says why saved tensors do not fit: ``MPO.load`` builds the model
        from the saved settings updated by ``custom_objects``, and a setting that changes the shape of the networks or
        of the multipliers (``policy_kwargs``, ``temperature_update``, ``epsilon_penalty`` on or off,
        ``per_dim_constraints`` with several action dimensions) cannot take the saved values.

        :raises IncompatibleParametersError: naming those settings and what torch found (where SB3's ``load`` would
            otherwise end in ``KeyError: 'policy.optimizer'``, its fallback for DQN's older files), or PopArt's
            statistics where ``value_normalization`` differs from the saved model's
        :raises ValueError: SB3's, where ``exact_match`` and the objects given (policy, optimisers, multipliers) are not
            the model's
        """
        params = load_path_or_dict
        if not isinstance(params, dict):
            _, params, _ = load_from_zip_file(params, device=device, load_data=False)
        if "value_normalizer" in params and self.value_normalizer is None:
            raise IncompatibleParametersError(
                f"{type(self).__name__}: the saved parameters hold PopArt's statistics, which value_normalization=False "
                "has no place for: the saved critic learned normalised values, which it cannot give unnormalised; "
                "expected value_normalization=True, as saved (custom_objects in MPO.load)"
            )
        if exact_match and "policy" in params and "value_normalizer" not in params and self.value_normalizer is not None:
            raise IncompatibleParametersError(
                f"{type(self).__name__}: the saved parameters hold no PopArt statistics for value_normalization=True: "
                "the saved critic learned unnormalised values; expected value_normalization=False, as saved "
                "(custom_objects in MPO.load)"
            )
        moved = self._moved_atoms(params.get("policy"))
        if moved is not None:
            raise IncompatibleParametersError(
                f"{type(self).__name__}: the saved categorical critic's atoms span [{moved[0]:g}, {moved[1]:g}], not "
                f"policy_kwargs critic_support={self.policy.critic_support!r}: its logits are the probabilities of those "
                f"atoms, which another support would read as other returns; expected critic_support=({moved[0]:g}, "
                f"{moved[1]:g}) as saved (custom_objects in MPO.load)"
            )
        if exact_match and set(params) != set(self._get_torch_save_params()[0]):
            # SB3 loads the objects given, then raises its ValueError, which names those missing or unknown
            super().set_parameters(params, exact_match, device)
            return
        try:
            super().set_parameters(params, exact_match, device)
        except (RuntimeError, ValueError) as error:  # torch's, for tensors or optimiser groups of other shapes or names
            raise IncompatibleParametersError(
                f"{type(self).__name__}: the saved parameters do not fit this model (policy_kwargs={self.policy_kwargs!r}, "
                f"temperature_update={self.temperature_update!r}, epsilon_penalty={self.epsilon_penalty!r}, "
                f"per_dim_constraints={self.per_dim_constraints!r}): {error}. Settings that shape the networks or the "
                "multipliers cannot differ from the saved model's (custom_objects in MPO.load)"
            ) from error

    def _moved_atoms(self, saved: Any) -> tuple[float, float] | None:
        """
        :param saved: The saved policy's state dict (or None)
        :return: The span of the saved categorical critic's atoms where they are not this policy's (a ``critic_support``
            changed at load: the same number of atoms, so torch would load them over the new ones without a word), else
            None
        """
        if not isinstance(saved, dict):
            return None
        own = self.policy.state_dict()
        for name, atoms in saved.items():
            if name.endswith("atoms") and name in own and own[name].shape == atoms.shape:
                if not th.allclose(own[name].cpu(), atoms.cpu(), rtol=1e-6, atol=1e-6):
                    return float(atoms[0]), float(atoms[-1])
        return None

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts = ["policy", "actor.optimizer", "critic.optimizer", "multipliers", "multipliers_optimizer"]
        if self.value_normalizer is not None:
            state_dicts.append("value_normalizer")
        return state_dicts, []
