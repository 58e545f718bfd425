"""Bad inputs are refused early, with an error that names them: arguments, action spaces, replay buffers, transitions."""

import re
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC, HerReplayBuffer
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv, FakeImageEnv, SimpleMultiObsEnv
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_mpo import MPO, NonFiniteError
from sb3_mpo.common.buffers import DictSegmentReplayBuffer, SegmentReplayBuffer
from sb3_mpo.common.checks import constructor_default, non_finite_transition, tuples_from_json
from sb3_mpo.mpo.policies import MlpPolicy

TINY = dict(batch_size=16, n_action_samples=4, policy_kwargs=dict(net_arch=[8]))


# Arguments


@pytest.mark.parametrize(
    "name, value, accepted",
    [
        ("learning_rate", "3e-4", "a finite positive Python float or a schedule"),
        ("learning_rate", None, "a finite positive Python float or a schedule"),
        ("learning_rate", float("inf"), "a finite positive Python float or a schedule"),
        ("learning_rate", np.float32(3e-4), "a finite positive Python float or a schedule"),
        ("batch_size", "256", "a positive integer"),
        ("batch_size", [256], "a positive integer"),
        ("batch_size", 32.0, "a positive integer"),
        ("batch_size", True, "a positive integer"),
        ("epsilon", "0.1", "a finite positive float"),
        ("epsilon", float("inf"), "a finite positive float"),
        ("gamma", None, r"a float in \[0, 1\]"),
        ("gamma", float("nan"), r"a float in \[0, 1\]"),
        ("tau", [0.005], r"a float in \(0, 1\]"),
        ("segment_length", "8", "a positive integer"),
        ("segment_length", 2.5, "a positive integer"),
        ("n_action_samples", 2.5, "an integer >= 2"),
        ("init_temperature", float("inf"), r"a finite float > 1e-08 \(the multipliers' floor\)"),
        ("init_alpha_std", 5e-9, r"a finite float > 1e-08 \(the multipliers' floor\)"),
        ("init_alpha_mean", 1e-8, r"a finite float > 1e-08 \(the multipliers' floor\)"),
        ("dual_learning_rate", float("inf"), "a finite positive float"),
        ("actor_learning_rate", "1e-4", r"a finite positive Python float or a schedule .* or None"),
        ("actor_learning_rate", 0.0, r"a finite positive Python float or a schedule .* or None"),
        ("max_grad_norm", float("nan"), "a finite positive float or None"),
        ("epsilon_penalty", float("inf"), "a finite positive float or None"),
        ("q_target", None, "one of 'n_step', 'retrace'"),
        ("temperature_update", "newton", "one of 'solve', 'gradient'"),
        ("per_dim_constraints", "yes", "bool"),
        ("learning_starts", float("nan"), "a non-negative integer"),
        ("learning_starts", -1, "a non-negative integer"),
        ("replay_fraction", 0.0, r"a float in \(0, 1\]"),
        ("replay_fraction", 1.5, r"a float in \(0, 1\]"),
        ("replay_fraction", float("nan"), r"a float in \(0, 1\]"),
    ],
)
def test_bad_argument_is_named_with_its_value_and_what_is_accepted(name: str, value: Any, accepted: str) -> None:
    """Strings, None, lists, bools, floats for integers and non-finite numbers: a ValueError naming all three."""
    with pytest.raises(ValueError, match=rf"^MPO: {name}={re.escape(repr(value))} is invalid, expected {accepted}"):
        MPO("MlpPolicy", "Pendulum-v1", **{name: value})


def test_a_learning_rate_schedule_that_turns_negative_is_refused() -> None:
    """A schedule is read at both ends of training: one that ends below 0 would make Adam climb the losses."""

    def negative_at_the_end(progress_remaining: float) -> float:
        return 2 * progress_remaining - 1.5

    def decaying_to_zero(progress_remaining: float) -> float:
        return 1e-3 * progress_remaining

    with pytest.raises(ValueError, match=r"learning_rate=.* is invalid, expected .* and a finite float >= 0 at progress 0"):
        MPO("MlpPolicy", "Pendulum-v1", learning_rate=negative_at_the_end)
    assert MPO("MlpPolicy", "Pendulum-v1", learning_rate=decaying_to_zero).lr_schedule(0.0) == 0.0


@pytest.mark.parametrize("name", ["epsilon", "epsilon_penalty"])
def test_an_e_step_bound_that_cannot_bind_over_the_sampled_actions_is_refused(name: str) -> None:
    """Over N = 4 samples the E-step's KL is at most log 4 = 1.386: a bound of 1.4 would leave a greedy E-step."""
    message = rf"^MPO: {name}=1.4 is invalid with n_action_samples=4, expected a float below log\(4\) = 1.386: "
    with pytest.raises(ValueError, match=message):
        MPO("MlpPolicy", "Pendulum-v1", n_action_samples=4, **{name: 1.4})
    assert getattr(MPO("MlpPolicy", "Pendulum-v1", n_action_samples=4, **{name: 1.38}), name) == 1.38
    # Discrete actions: the E-step enumerates them under π_old's probabilities, and no such bound applies; the
    # parametric improvement has no E-step
    assert MPO("MlpPolicy", "CartPole-v1", n_action_samples=4, epsilon=1.4).epsilon == 1.4
    assert MPO("MlpPolicy", "Pendulum-v1", n_action_samples=4, policy_improvement="parametric", epsilon=1.4).epsilon == 1.4


def test_numeric_string_gets_the_yaml_hint() -> None:
    with pytest.raises(ValueError, match=r"epsilon_std='1e-5' is invalid.*write !!float 1e-3 or 1\.0e-3"):
        MPO("MlpPolicy", "Pendulum-v1", epsilon_std="1e-5")


@pytest.mark.parametrize(
    "policy_kwargs, message",
    [
        (dict(net_arch=[0]), r"policy_kwargs\['net_arch'\]=\[0\] is invalid, expected None, a list of positive integers"),
        (dict(net_arch=[-1]), r"policy_kwargs\['net_arch'\]=\[-1\] is invalid"),
        (dict(net_arch=[32, "a"]), r"policy_kwargs\['net_arch'\]=\[32, 'a'\] is invalid"),
        (dict(net_arch=(32, 32)), r"policy_kwargs\['net_arch'\]=\(32, 32\) is invalid"),
        (dict(net_arch=dict(pi=[32])), r"policy_kwargs\['net_arch'\]=\{'pi': \[32\]\} is invalid.*keys 'pi' and 'qf'"),
        (dict(init_std="0.5"), r"policy_kwargs\['init_std'\]='0\.5' is invalid, expected a finite positive float.*!!float"),
        (dict(min_std=float("inf")), r"policy_kwargs\['min_std'\]=inf is invalid, expected a finite positive float"),
        (dict(action_bounding="sigmoid"), r"policy_kwargs\['action_bounding'\]='sigmoid' is invalid, expected one of"),
        # checked without batch_renorm=True too, as every other key
        (
            dict(batch_norm_momentum=1.5),
            r"policy_kwargs\['batch_norm_momentum'\]=1\.5 is invalid, expected a float in \(0, 1\]",
        ),
        (dict(renorm_warmup_steps=0.5), r"policy_kwargs\['renorm_warmup_steps'\]=0\.5 is invalid, expected a non-negative"),
        (dict(net_arc=[64]), r"'policy_kwargs' key 'net_arc' for MPOPolicy\. Did you mean 'net_arch'\?"),
        (dict(action_space=spaces.Discrete(2)), r"'policy_kwargs' key 'action_space' is set by MPO itself"),
        # the optimiser's arguments, against its own constructor
        (dict(optimizer_kwargs=dict(beta=(0.5, 0.9))), r"'optimizer_kwargs' key 'beta' for Adam\. Did you mean 'betas'\?"),
        (dict(optimizer_kwargs=dict(lr=1e-3)), r"'optimizer_kwargs' key 'lr' is set by MPO from learning_rate: remove it"),
        (
            dict(actor_optimizer_kwargs=dict(beta2=0.99)),
            r"'actor_optimizer_kwargs' key 'beta2' for Adam\. Did you mean 'betas'\?",
        ),
        (
            dict(actor_optimizer_kwargs=dict(lr=1e-4)),
            r"'actor_optimizer_kwargs' key 'lr' is set by MPO from actor_learning_rate \(or learning_rate\): remove it",
        ),
        (dict(actor_optimizer_kwargs=[("betas", (0.5, 0.99))]), r"policy_kwargs\['actor_optimizer_kwargs'\]=\[.*is invalid"),
        (
            dict(optimizer_class=th.optim.SGD, optimizer_kwargs=dict(betas=(0.5, 0.9))),
            r"'optimizer_kwargs' key 'betas' for SGD\. SGD accepts: dampening, .*momentum",
        ),
    ],
)
def test_bad_policy_kwargs_are_refused_at_construction(policy_kwargs: dict[str, Any], message: str) -> None:
    """net_arch=[0] would silently train a network that ignores the observation; the others would fail inside torch."""
    with pytest.raises(ValueError, match=message):
        MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=policy_kwargs)


@pytest.mark.parametrize(
    "env_id, policy_kwargs, message",
    [
        ("CartPole-v1", dict(action_bounding="tanh"), r"action_bounding='tanh' is invalid with a Discrete action space"),
        ("CartPole-v1", dict(init_std=0.1, min_std=0.05), r"init_std=0\.1 is invalid with a Discrete action space"),
        ("CartPole-v1", dict(deterministic_action="mean"), r"deterministic_action='mean' is invalid with a Discrete"),
        ("Pendulum-v1", dict(n_atoms=11), r"n_atoms=11 is invalid without critic_support, whose atoms it counts"),
        ("Pendulum-v1", dict(renorm_warmup_steps=5), r"renorm_warmup_steps=5 is invalid without batch_renorm"),
        ("Pendulum-v1", dict(batch_norm_momentum=0.1), r"batch_norm_momentum=0\.1 is invalid without batch_renorm"),
    ],
)
def test_settings_that_would_do_nothing_are_refused(env_id: str, policy_kwargs: dict[str, Any], message: str) -> None:
    """A Gaussian setting with Discrete actions, or a setting of a critic the policy does not build, changes nothing."""
    with pytest.raises(ValueError, match=rf"^MPOPolicy: {message}.*expected its default"):
        MPO("MlpPolicy", env_id, policy_kwargs=policy_kwargs)
    same = {key: constructor_default(MlpPolicy, key) for key in policy_kwargs}
    MPO("MlpPolicy", env_id, policy_kwargs=same)  # their defaults, given, are accepted


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch_size=np.int64(16), buffer_size=np.int32(1000), segment_length=np.int64(4), n_action_samples=np.int16(4)),
        dict(learning_rate=np.float64(1e-3), gamma=1, tau=1, epsilon=np.float32(0.1), max_grad_norm=None),
        dict(policy_kwargs=dict(net_arch=dict(pi=[8], qf=[np.int64(16)]), init_std=0.3, min_std=np.float32(1e-3))),
        dict(policy_kwargs=dict(net_arch=[])),
    ],
)
def test_good_arguments_are_accepted(kwargs: dict[str, Any]) -> None:
    """NumPy numbers, integers for floats, a dict net_arch and no hidden layer at all are all valid."""
    model = MPO("MlpPolicy", "Pendulum-v1", learning_starts=20, **{**TINY, **kwargs})
    model.learn(40)
    assert model._n_updates > 0


# Action spaces


class ActionSpaceEnv(gym.Env):
    """One-step episodes with a given action space."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def __init__(self, action_space: spaces.Space):
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        assert self.action_space.contains(action), f"{action} is outside {self.action_space}"
        return self.observation_space.sample(), 0.0, True, False, {}


@pytest.mark.parametrize(
    "action_space, message",
    [
        (
            spaces.Box(np.float32([-1.0, 0.5, 0.0]), np.float32([1.0, 0.5, 0.0])),
            r"low < high in every dimension.*dimension\(s\) \[1, 2\] have low >= high",
        ),
        (
            spaces.Box(np.float32([[0.0, 0.0]]), np.float32([[1.0, 0.5]])),
            r"MPO needs a Box action space of one dimension .* of shape \(1, 2\)",
        ),
        (
            spaces.Discrete(3, start=1),
            r"actions start at 0, got Discrete\(3, start=1\).*action_space is Discrete\(3\).*returns a \+ 1",
        ),
    ],
)
def test_action_space_mpo_cannot_act_in_is_refused(action_space: spaces.Space, message: str) -> None:
    """A constant Box dimension gave NaN actions; Discrete(3, start=1) sent actions outside the space."""
    with pytest.raises(ValueError, match=message):
        MPO("MlpPolicy", ActionSpaceEnv(action_space))


# Replay buffers


def saved_buffer(model: Any, path: Any) -> Any:
    """Collect a few transitions with ``model`` (no update) and save its replay buffer to ``path``."""
    model.learn(30)
    model.save_replay_buffer(path)
    return path


@pytest.mark.parametrize(
    "algo, saved, loading, message",
    [
        (SAC, dict(), dict(), r"q_target='retrace'.*it is a ReplayBuffer, where this model samples a SegmentReplayBuffer"),
        (
            MPO,
            dict(segment_length=4),
            dict(segment_length=8),
            r"it has segment_length=4, where this model has segment_length=8",
        ),
        (MPO, dict(), dict(q_target="n_step"), r"it is a SegmentReplayBuffer, where this model samples a ReplayBuffer"),
        (
            MPO,
            dict(q_target="n_step", n_steps=3),
            dict(q_target="n_step", n_steps=5),
            r"it has n_steps=3, where this model has n_steps=5",
        ),
        (
            MPO,
            dict(replay_buffer_kwargs=dict(handle_timeout_termination=False)),
            dict(),
            r"it has handle_timeout_termination=False, where this model has handle_timeout_termination=True",
        ),
        (MPO, dict(env=make_vec_env("Pendulum-v1", n_envs=2)), dict(), r"it has n_envs=2, where this model has n_envs=1"),
    ],
)
def test_replay_buffer_sampled_otherwise_is_refused(
    tmp_path: Any, algo: type, saved: dict[str, Any], loading: dict[str, Any], message: str
) -> None:
    """SAC's transitions in a Retrace model trained on 1-step targets; another segment length replaced the model's."""
    kwargs = dict(learning_starts=100, buffer_size=200, batch_size=16, seed=0)
    saved = {"env": "Pendulum-v1", **saved}
    saving_model = algo("MlpPolicy", policy_kwargs=dict(net_arch=[8]), **kwargs, **saved)
    path = saved_buffer(saving_model, tmp_path / "buffer.pkl")
    model = MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), **kwargs, **loading)
    own = model.replay_buffer
    with pytest.raises(ValueError, match=message):
        model.load_replay_buffer(path)
    assert model.replay_buffer is own


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(replay_buffer_kwargs=dict(handle_timeout_termnation=False)),
            r"'replay_buffer_kwargs' key 'handle_timeout_termnation' for SegmentReplayBuffer\. "
            r"Did you mean 'handle_timeout_termination'\? SegmentReplayBuffer accepts: handle_timeout_termination, "
            r"segment_length$",
        ),
        (dict(replay_buffer_kwargs=dict(buffer_size=10)), r"'buffer_size' is set by SB3 from buffer_size: remove it"),
        # SB3's pick for n-step targets, whose constructor passes its other keywords on to ReplayBuffer's
        (
            dict(q_target="n_step", n_steps=3, replay_buffer_kwargs=dict(foo=1)),
            r"'replay_buffer_kwargs' key 'foo' for NStepReplayBuffer\. NStepReplayBuffer accepts: ",
        ),
        # SB3's pick for 1-step targets is its ReplayBuffer, which has no segments
        (
            dict(q_target="n_step", replay_buffer_kwargs=dict(segment_length=4)),
            r"'replay_buffer_kwargs' key 'segment_length' for ReplayBuffer\. ReplayBuffer accepts: handle_timeout_",
        ),
    ],
)
def test_replay_buffer_kwargs_the_buffer_does_not_take_are_refused_at_construction(
    kwargs: dict[str, Any], message: str
) -> None:
    """Python's TypeError would name the key inside SB3's buffer construction, without what the buffer accepts."""
    with pytest.raises(ValueError, match=message):
        MPO("MlpPolicy", "Pendulum-v1", **kwargs)


def test_a_buffer_that_takes_any_keyword_refuses_only_what_sb3_passes() -> None:
    """SMM's buffer builds its density model with its **kwargs: those are its own to judge, but not n_envs."""
    from sb3_mpo.exploration import SkillWrapper
    from sb3_mpo.exploration.smm import SMMReplayBuffer

    env = SkillWrapper(gym.make("sb3_mpo/PointRooms-v0"), n_skills=2)
    kwargs = dict(q_target="n_step", replay_buffer_class=SMMReplayBuffer)
    model = MPO("MlpPolicy", env, replay_buffer_kwargs=dict(n_skills=2), **kwargs)
    assert isinstance(model.replay_buffer, SMMReplayBuffer)
    with pytest.raises(ValueError, match=r"'replay_buffer_kwargs' key 'n_envs' is set by SB3 from the environment"):
        MPO("MlpPolicy", env, replay_buffer_kwargs=dict(n_skills=2, n_envs=2), **kwargs)


def test_optimizer_kwargs_of_a_policy_without_optimizer_class_are_its_own() -> None:
    from sb3_mpo.common.checks import check_policy_kwargs

    class OwnPolicy:
        def __init__(self, observation_space: Any, action_space: Any, lr_schedule: Any, optimizer_kwargs: Any = None):
            pass

    check_policy_kwargs("MPO", OwnPolicy, dict(optimizer_kwargs=dict(betas=(0.5, 0.9))))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(replay_buffer_kwargs=dict(segment_length=8, handle_timeout_termination=False)),
        dict(q_target="n_step", n_steps=3, replay_buffer_kwargs=dict(n_steps=3, gamma=0.99)),
        dict(policy_kwargs=dict(optimizer_class=th.optim.SGD, optimizer_kwargs=dict(momentum=0.9, nesterov=True))),
    ],
)
def test_buffer_and_optimizer_kwargs_their_classes_take_are_passed_on(kwargs: dict[str, Any]) -> None:
    model = MPO("MlpPolicy", "Pendulum-v1", **kwargs)
    for key, value in kwargs.get("replay_buffer_kwargs", {}).items():
        assert getattr(model.replay_buffer, key) == value
    for key, value in kwargs.get("policy_kwargs", {}).get("optimizer_kwargs", {}).items():
        assert model.actor.optimizer.defaults[key] == value and model.critic.optimizer.defaults[key] == value


@pytest.mark.parametrize(
    "policy_kwargs, actor, critic",
    [
        # the fused default is Adam's implementation for both, until the actor's kwargs choose another
        (dict(actor_optimizer_kwargs=dict(betas=(0.9, 0.99))), dict(betas=(0.9, 0.99), fused=True), dict(fused=True)),
        (dict(actor_optimizer_kwargs=dict(foreach=True)), dict(foreach=True, fused=None), dict(foreach=None, fused=True)),
        (
            dict(optimizer_kwargs=dict(foreach=True, amsgrad=True), actor_optimizer_kwargs=dict(fused=True)),
            dict(foreach=None, fused=True, amsgrad=True),
            dict(foreach=True, fused=None, amsgrad=True),
        ),
        # a shared choice that the actor's does not exclude stays
        (
            dict(optimizer_kwargs=dict(capturable=True), actor_optimizer_kwargs=dict(foreach=True)),
            dict(capturable=True, foreach=True, fused=None),
            dict(capturable=True, foreach=None, fused=None),
        ),
    ],
)
def test_the_actors_optimizer_kwargs_replace_the_shared_ones_in_its_optimiser_alone(
    policy_kwargs: dict[str, Any], actor: dict[str, Any], critic: dict[str, Any]
) -> None:
    model = MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=policy_kwargs)
    for optimizer, expected in ((model.actor.optimizer, actor), (model.critic.optimizer, critic)):
        assert {key: optimizer.defaults[key] for key in expected} == expected
    assert model.critic.optimizer.defaults["betas"] == (0.9, 0.999)


def goal_env() -> gym.Env:
    """A goal-conditioned task (Dict observations with achieved and desired goals), as HerReplayBuffer needs."""
    return BitFlippingEnv(n_bits=4, continuous=True, max_steps=4)


def pendulum() -> gym.Env:
    return gym.make("Pendulum-v1")


@pytest.mark.parametrize(
    "make_env, kwargs, message",
    [
        (goal_env, dict(replay_buffer_class=HerReplayBuffer), r"replay_buffer_class=HerReplayBuffer is invalid with "
         r"q_target='retrace' \(the default\), expected None or a SegmentReplayBuffer subclass; pass q_target='n_step'"),
        (goal_env, dict(replay_buffer_class=HerReplayBuffer, q_target="n_step", n_steps=3),
         r"n_steps=3 is invalid with replay_buffer_class=HerReplayBuffer, which samples single transitions .*expected "
         r"n_steps=1 with it, or replay_buffer_class=None"),
        (lambda: SimpleMultiObsEnv(discrete_actions=False), dict(q_target="n_step", n_steps=3),
         r"n_steps=3 is invalid with Dict observations, .*expected n_steps=1, or q_target='retrace'"),
        (pendulum, dict(replay_buffer_class=SegmentReplayBuffer, q_target="n_step"),
         r"replay_buffer_class=SegmentReplayBuffer is invalid with q_target='n_step', which trains on transitions, not "
         r"segments; expected None or a transition buffer, or q_target='retrace'"),
        (pendulum, dict(replay_buffer_kwargs=dict(segment_length=4)),
         r"replay_buffer_kwargs\['segment_length'\]=4 disagrees with segment_length=8: .*expected segment_length=4 as "
         r"MPO's argument"),
        (pendulum, dict(q_target="n_step", n_steps=5, replay_buffer_kwargs=dict(n_steps=3)),
         r"replay_buffer_kwargs\['n_steps'\]=3 disagrees with n_steps=5"),
        (pendulum, dict(q_target="n_step", replay_buffer_class=NStepReplayBuffer,
                        replay_buffer_kwargs=dict(n_steps=3, gamma=0.9)),
         r"replay_buffer_kwargs\['gamma'\]=0.9 disagrees with gamma=0.99"),
    ],
)  # fmt: skip
def test_replay_buffer_that_cannot_feed_the_critic_target_is_refused(
    make_env: Any, kwargs: dict[str, Any], message: str
) -> None:
    """
    Refused before SB3 builds the buffer: SB3 itself would train 1-step targets, fail an assertion, or let the buffer's
    horizon, discount or segment length differ from the model's.
    """
    env = make_env()
    policy = "MultiInputPolicy" if isinstance(env.observation_space, spaces.Dict) else "MlpPolicy"
    with pytest.raises(ValueError, match=message):
        MPO(policy, env, **TINY, **kwargs)


@pytest.mark.parametrize(
    "make_env, kwargs, buffer_class",
    [
        (goal_env, dict(replay_buffer_class=HerReplayBuffer, q_target="n_step"), HerReplayBuffer),
        (lambda: SimpleMultiObsEnv(discrete_actions=False), dict(q_target="n_step"), DictReplayBuffer),
        (lambda: SimpleMultiObsEnv(discrete_actions=False), dict(), DictSegmentReplayBuffer),
    ],
)
def test_replay_buffer_class_that_feeds_the_critic_target_is_built(make_env: Any, kwargs: dict[str, Any], buffer_class: type):
    assert type(MPO("MultiInputPolicy", make_env(), **TINY, **kwargs).replay_buffer) is buffer_class


def test_n_step_buffer_of_sb3_is_accepted_with_its_own_horizon() -> None:
    """SB3's advice for a custom n-step buffer (its horizon in replay_buffer_kwargs, n_steps=1 on the model) works."""
    buffer_kwargs = dict(n_steps=3, gamma=0.99)
    model = MPO("MlpPolicy", "Pendulum-v1", q_target="n_step", replay_buffer_class=NStepReplayBuffer,
                replay_buffer_kwargs=buffer_kwargs, **TINY)  # fmt: skip
    assert isinstance(model.replay_buffer, NStepReplayBuffer) and model.replay_buffer.n_steps == 3


class _CustomNStepBuffer(NStepReplayBuffer):
    """A user's n-step buffer, which SB3 would warn ignores the model's n_steps."""


@pytest.mark.parametrize("buffer_class", [NStepReplayBuffer, _CustomNStepBuffer])
@pytest.mark.parametrize(
    "n_steps, buffer_kwargs, horizon",
    [(5, None, 5), (1, None, 1), (1, {"n_steps": 4}, 4), (5, {"n_steps": 5}, 5)],
    ids=["model_horizon", "one_step", "own_horizon", "both"],
)
def test_an_n_step_buffer_asked_for_by_class_takes_the_models_discount_and_horizon(
    buffer_class: type, n_steps: int, buffer_kwargs: dict[str, Any] | None, horizon: int
) -> None:
    """
    The buffer computes the returns the critic learns from: where its arguments leave gamma and n_steps out it takes
    the model's (not NStepReplayBuffer's defaults, 0.99 and 3), its sampled discounts are powers of the model's gamma,
    no warning says n_steps is ignored, and the caller's replay_buffer_kwargs are left as they were.
    """
    asked = None if buffer_kwargs is None else dict(buffer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = MPO("MlpPolicy", "Pendulum-v1", q_target="n_step", gamma=0.9, n_steps=n_steps,
                    replay_buffer_class=buffer_class, replay_buffer_kwargs=asked, learning_starts=1000, **TINY)  # fmt: skip
    buffer = model.replay_buffer
    assert type(buffer) is buffer_class and buffer.gamma == 0.9 and buffer.n_steps == horizon
    assert asked == buffer_kwargs
    model.learn(80)  # before learning_starts: the buffer fills, nothing trains
    discounts = {round(float(discount), 5) for discount in buffer.sample(64).discounts.numpy().ravel()}
    assert discounts <= {round(0.9**k, 5) for k in range(1, horizon + 1)} and round(0.9**horizon, 5) in discounts


def test_replay_buffer_kwargs_of_the_caller_are_left_as_given_for_a_second_model() -> None:
    """SB3 adds n_steps and gamma to the buffer's arguments: not to the caller's dict, which a sweep may reuse."""
    buffer_kwargs = {"handle_timeout_termination": True}
    for gamma in (0.9, 0.99):
        model = MPO("MlpPolicy", "Pendulum-v1", q_target="n_step", n_steps=3, gamma=gamma,
                    replay_buffer_kwargs=buffer_kwargs, **TINY)  # fmt: skip
        assert model.replay_buffer.gamma == gamma
    assert buffer_kwargs == {"handle_timeout_termination": True}


def test_replay_buffer_of_another_environment_is_refused_at_load(tmp_path: Any) -> None:
    """A buffer recorded on Pendulum-v1 (3 observations) is not sampled by a MountainCarContinuous-v0 model (2)."""
    kwargs = dict(learning_starts=100, buffer_size=200, batch_size=16, policy_kwargs=dict(net_arch=[8]), seed=0)
    path = saved_buffer(MPO("MlpPolicy", "Pendulum-v1", **kwargs), tmp_path / "buffer.pkl")
    model = MPO("MlpPolicy", "MountainCarContinuous-v0", **kwargs)
    own = model.replay_buffer
    with pytest.raises(ValueError, match=r"it has observation_space=Box\(.*\(3,\), float32\), where this model has "):
        model.load_replay_buffer(path)
    assert model.replay_buffer is own


def test_replay_buffer_with_the_same_settings_loads(tmp_path: Any) -> None:
    kwargs = dict(
        learning_starts=100, buffer_size=200, batch_size=16, segment_length=4, policy_kwargs=dict(net_arch=[8]), seed=0
    )
    path = saved_buffer(MPO("MlpPolicy", "Pendulum-v1", **kwargs), tmp_path / "buffer.pkl")
    model = MPO("MlpPolicy", "Pendulum-v1", **kwargs)
    model.load_replay_buffer(path)
    assert model.replay_buffer.pos == 30


# Transitions


class Poison(gym.Wrapper):
    """
    Put ``value`` into one quantity of one step: the first observation after reset (``"observation"``), or at step
    ``at_step`` the reward, the next observation, or the terminal observation of an episode that then ends.
    """

    def __init__(self, env: gym.Env, quantity: str, at_step: int, value: float = np.nan):
        super().__init__(env)
        self.quantity, self.at_step, self.value = quantity, at_step, value
        self.n_steps = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        observation, info = self.env.reset(**kwargs)
        if self.quantity == "observation" and self.n_steps == 0:
            observation = self._poisoned(observation)
        return observation, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.n_steps += 1
        if self.n_steps == self.at_step:
            if self.quantity == "reward":
                reward = self.value
            elif self.quantity in ("next observation", "terminal observation"):
                observation = self._poisoned(observation)
                terminated = terminated or self.quantity == "terminal observation"
        return observation, reward, terminated, truncated, info

    def _poisoned(self, observation: Any) -> Any:
        if isinstance(observation, dict):
            return {**observation, "vec": self._poisoned(observation["vec"])}
        observation = np.array(observation, copy=True)
        observation[0] = self.value
        return observation


def poisoned_vec_env(quantity: str, at_step: int, value: float, dict_observations: bool = False) -> DummyVecEnv:
    """Two environments, of which the second one is poisoned."""

    def make(poisoned: bool) -> gym.Env:
        env = SimpleMultiObsEnv(random_start=True, discrete_actions=False) if dict_observations else gym.make("Pendulum-v1")
        return Poison(env, quantity, at_step, value) if poisoned else env

    return DummyVecEnv([lambda: make(False), lambda: make(True)])


@pytest.mark.parametrize(
    "quantity, value, normalize, dict_observations",
    [
        ("observation", np.nan, False, False),
        ("next observation", np.nan, False, False),
        ("next observation", np.inf, True, False),
        ("reward", np.inf, False, False),
        ("reward", -np.inf, True, False),
        ("terminal observation", np.nan, False, False),
        ("next observation", np.nan, False, True),
        ("terminal observation", np.inf, False, True),
    ],
)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # VecNormalize's statistics of the inf
def test_non_finite_transition_is_refused_before_it_is_stored(
    quantity: str, value: float, normalize: bool, dict_observations: bool
) -> None:
    """The error names the quantity, the env and the env step, and the replay buffer holds only finite values."""
    at_step = 1 if quantity == "observation" else 6
    env = poisoned_vec_env(quantity, at_step, value, dict_observations)
    if normalize:
        env = VecNormalize(env)
    policy = "MultiInputPolicy" if dict_observations else "MlpPolicy"
    model = MPO(policy, env, learning_starts=1000, buffer_size=100, seed=0, **TINY)
    with pytest.raises(NonFiniteError, match=rf"non-finite {quantity} from env 1 at env step {2 * at_step};"):
        model.learn(40)
    buffer = model.replay_buffer
    assert buffer.pos == at_step - 1  # nothing of the poisoned step, for either environment
    for name in ("observations", "next_observations", "actions", "rewards"):
        stored = getattr(buffer, name)
        for array in stored.values() if isinstance(stored, dict) else [stored]:
            assert np.isfinite(array).all()


@pytest.mark.parametrize(
    "quantities, terminal_observations, expected",
    [
        (dict(action=np.array([[0.0], [np.nan], [np.inf]])), {}, ("action", 1)),
        (dict(reward=np.array([1.0, 2.0]), observation=np.array([[0.0, 1.0], [1.0, -np.inf]])), {}, ("observation", 1)),
        (dict(observation={"a": np.zeros((3, 2)), "b": np.array([[1.0], [1.0], [np.nan]])}), {}, ("observation", 2)),
        (dict(observation=np.full((2, 4), 255, dtype=np.uint8)), {1: np.array([np.nan])}, ("terminal observation", 1)),
        (dict(observation=np.zeros((2, 3)), action=np.array([0, 1])), {0: {"a": np.ones(2)}}, None),
    ],
)
def test_non_finite_transition_finds_the_quantity_and_env(
    quantities: dict[str, Any], terminal_observations: dict[int, Any], expected: tuple[str, int] | None
) -> None:
    assert non_finite_transition(quantities, terminal_observations) == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(action_bounding="squash"),
            r"GaussianActor: action_bounding='squash' is invalid, expected one of \('clip', 'tanh'\)",
        ),
        (dict(init_std=0.1, min_std=0.2), r"GaussianActor: min_std=0.2 and init_std=0.1 are invalid, expected 0 < min_std"),
    ],
)
def test_a_policy_built_alone_names_a_bad_actor_setting(kwargs: dict[str, Any], match: str) -> None:
    """Without MPO's checks (MPOPolicy built directly), the actor still names the setting, its value and what it accepts."""
    from sb3_mpo.mpo.policies import MPOPolicy

    box = spaces.Box(-1.0, 1.0, (2,))
    with pytest.raises(ValueError, match=match):
        MPOPolicy(box, box, lambda _: 1e-3, **kwargs)


class BoxActionsEnv(gym.Env):
    """Observations of one dimension; actions in a given Box (bounds of any float32 values, any shape)."""

    observation_space = spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)

    def __init__(self, low: Any, high: Any, shape: tuple[int, ...] | None = None):
        self.action_space = spaces.Box(np.float32(low), np.float32(high), shape, dtype=np.float32)
        self.outside = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.outside += int(not self.action_space.contains(np.asarray(action, dtype=np.float32)))
        return np.zeros(1, dtype=np.float32), 0.0, False, False, {}


def test_actions_on_the_box_faces_stay_within_bounds_that_float32_would_round_past() -> None:
    """The clipped Gaussian's ±1, rescaled to [-3.7951624, 0.50708646] in float32, would land one rounding step beyond
    the high bound (0.5070865); the environment and predict get actions inside the box."""
    env = BoxActionsEnv([-3.7951624, 0.0], [0.50708646, 1.0])
    scaled = np.array([[1.0, 1.0], [-1.0, -1.0]], dtype=np.float32)
    low, high = env.action_space.low, env.action_space.high
    assert (low + 0.5 * (scaled + 1.0) * (high - low) > high).any(), "the bounds must round past the box in float32"
    wide = {**TINY, "policy_kwargs": dict(net_arch=[8], init_std=5.0)}
    model = MPO("MlpPolicy", env, seed=0, learning_starts=20, **wide)
    assert all(env.action_space.contains(action) for action in model.policy.unscale_action(scaled))
    model.learn(100)  # a wide Gaussian: most sampled actions are clipped onto the faces
    assert env.outside == 0
    observations = np.zeros((200, 1), dtype=np.float32)
    for deterministic in (True, False):
        actions, _ = model.predict(observations, deterministic=deterministic)
        assert ((actions >= low) & (actions <= high)).all()


def test_a_box_action_space_of_several_dimensions_is_refused() -> None:
    with pytest.raises(ValueError, match=r"MPO needs a Box action space of one dimension .* of shape \(2, 2\): wrap .* the "
                       r"flat Box of 4 actions"):  # fmt: skip
        MPO("MlpPolicy", BoxActionsEnv(-1.0, 1.0, (2, 2)), **TINY)


@pytest.mark.parametrize(
    "make_env, kwargs, message",
    [
        (pendulum, dict(verbose="yes"), r"^MPO: verbose='yes' is invalid, expected"),
        (pendulum, dict(seed=1.5), r"^MPO: seed=1\.5 is invalid, expected None or a Python integer"),
        (pendulum, dict(seed=np.int64(3)), r"^MPO: seed=np\.int64\(3\) is invalid, expected None or a Python integer"),
        (pendulum, dict(optimize_memory_usage="yes"), r"^MPO: optimize_memory_usage='yes' is invalid, expected"),
        (pendulum, dict(q_target="n_step", n_steps=3, optimize_memory_usage=True),
         r"^MPO: optimize_memory_usage=True is invalid, expected False with n-step returns"),
        (pendulum, dict(policy="MultiInputPolicy"),
         r"^MPO: policy=MultiInputPolicy is invalid with the observation space Box.*, expected a Dict observation space"),
        (lambda: make_vec_env("Pendulum-v1", n_envs=2), dict(train_freq=(1, "episode")),
         r"^MPO: train_freq=\(1, 'episode'\) is invalid with 2 environments, expected a frequency in steps"),
    ],
)  # fmt: skip
def test_settings_sb3_would_trip_over_are_refused_by_name(make_env: Any, kwargs: dict[str, Any], message: str) -> None:
    """SB3 leaves these to a TypeError, an AttributeError or an assertion while training; MPO names them at construction."""
    policy = kwargs.pop("policy", "MlpPolicy")
    with pytest.raises(ValueError, match=message):
        MPO(policy, make_env(), **TINY, **kwargs)


def test_tuples_that_a_json_round_trip_made_lists_are_tuples_again() -> None:
    """Only where the annotation takes a tuple and no list: a list annotation, a union with one, or no annotation keep it."""
    parameters = {"support": tuple[float, float] | None, "arch": list[int], "either": tuple[int, int] | list[int]}
    read_back = {"support": [-10.0, 10.0], "arch": [64, 64], "either": [1, 2], "unknown": [1, 2], "scalar": 3}
    assert tuples_from_json(read_back, parameters) == {**read_back, "support": (-10.0, 10.0)}
    assert isinstance(tuples_from_json(read_back, parameters)["arch"], list)


@pytest.mark.parametrize(
    "policy, env, policy_kwargs, message",
    [
        ("MlpPolicy", pendulum, dict(features_extractor_kwargs=dict(features_dimm=8)),
         r"^Unknown hyperparameter 'policy_kwargs' 'features_extractor_kwargs' key 'features_dimm' for FlattenExtractor\. "
         r"FlattenExtractor takes no keyword of its own$"),
        ("MlpPolicy", pendulum, dict(features_extractor_kwargs=dict(observation_space=None)),
         r"'features_extractor_kwargs' key 'observation_space' is set by SB3 from the environment: remove it"),
        ("CnnPolicy", lambda: FakeImageEnv(), dict(features_extractor_kwargs=dict(feature_dim=32)),
         r"key 'feature_dim' for NatureCNN\. Did you mean 'features_dim'\? NatureCNN accepts: features_dim, normalized_image"),
    ],
)  # fmt: skip
def test_features_extractor_kwargs_the_extractor_does_not_take_are_refused(policy, env, policy_kwargs, message) -> None:
    """The extractor's TypeError would come while the policy is built, without what the extractor accepts."""
    with pytest.raises(ValueError, match=message):
        MPO(policy, env(), buffer_size=1000, batch_size=16, policy_kwargs=policy_kwargs)
