"""Run tests in the style of SB3's tests/test_run.py: MPO trains briefly on every supported kind of input."""

import glob

import gymnasium as gym
import numpy as np
import pytest
import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from scipy import integrate, stats
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import BitFlippingEnv, FakeImageEnv, IdentityEnvBox, SimpleMultiObsEnv
from stable_baselines3.common.logger import configure
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import FloatSchedule
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from sb3_mpo import MPO, NonFiniteError
from sb3_mpo.common.buffers import SegmentReplayBuffer
from sb3_mpo.mpo.evaluation import NStepEvaluation, RetraceEvaluation

import brute_force

SMALL = dict(learning_starts=50, batch_size=32, n_action_samples=4, policy_kwargs=dict(net_arch=[32, 32]))


class StopAfterFirstUpdate(BaseCallback):
    """Stops training at the first env step after the model's first gradient step."""

    def _on_step(self) -> bool:
        return self.model._n_updates == 0


class BoundsCheckingEnv(gym.Wrapper):
    """Records every action the agent sends, to check they stay inside an asymmetric Box."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.actions: list[np.ndarray] = []

    def step(self, action):
        self.actions.append(np.asarray(action).copy())
        return self.env.step(action)


class AsymmetricBoxEnv(gym.Env):
    """A 2-D continuous task whose action bounds are neither symmetric nor unit: reward = -(a - target)^2."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    action_space = spaces.Box(np.array([0.0, -2.0], dtype=np.float32), np.array([1.0, 5.0], dtype=np.float32))

    def __init__(self, reward_fn=None):
        self.target = np.array([0.9, 4.0], dtype=np.float32)
        self.n_steps = 0
        self.total_steps = 0
        self.reward_fn = reward_fn

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.n_steps = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.n_steps += 1
        self.total_steps += 1
        reward = -float(np.sum((action - self.target) ** 2))
        if self.reward_fn is not None:
            reward = self.reward_fn(self.total_steps, reward)
        return self.observation_space.sample(), reward, False, self.n_steps >= 20, {}


@pytest.mark.parametrize("action_bounding", ["clip", "tanh"])
def test_actions_inside_bounds(action_bounding):
    """Actions sent to the env, and deterministic predictions, stay inside an asymmetric Box for both schemes."""
    env = BoundsCheckingEnv(AsymmetricBoxEnv())
    model = MPO("MlpPolicy", env, seed=0, **{**SMALL, "policy_kwargs": dict(net_arch=[32], action_bounding=action_bounding)})
    model.learn(200)
    actions = np.array(env.actions)
    low, high = env.action_space.low, env.action_space.high
    assert np.all(actions >= low) and np.all(actions <= high)
    # Policy actions (after learning_starts) must not collapse onto one corner: both bounds matter
    assert actions[60:].std(axis=0).min() > 0
    obs = np.stack([env.observation_space.sample() for _ in range(64)])
    for deterministic in (True, False):
        predicted, _ = model.predict(obs, deterministic=deterministic)
        assert np.all(predicted >= low) and np.all(predicted <= high)


def test_replay_stores_gaussian_actions():
    """With the clip scheme, replay keeps the unclipped Gaussian sample; the env receives its clipped, rescaled image."""
    env = BoundsCheckingEnv(AsymmetricBoxEnv())
    model = MPO("MlpPolicy", env, seed=1, **{**SMALL, "policy_kwargs": dict(net_arch=[8], init_std=3.0)})
    model.learn(120)
    stored = model.replay_buffer.actions[60:120, 0]
    assert np.abs(stored).max() > 1.0, "a std of 3 must produce samples outside [-1, 1]"
    sent = np.array(env.actions[60:120])
    np.testing.assert_allclose(sent, model.policy.unscale_action(np.clip(stored, -1, 1)), rtol=1e-5, atol=1e-5)


def _penalty_off(model: MPO) -> None:
    assert model.multipliers.raw_alpha_mean.shape == (1,) and model.multipliers.raw_temperatures.shape == (1,)
    assert "train/temperature_penalty" not in model.logger.name_to_value


def _scheduled(model: MPO) -> None:
    expected = 1e-3 * model._current_progress_remaining  # the schedule at the last update's progress
    for optimizer in (model.actor.optimizer, model.critic.optimizer):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert model.multipliers_optimizer.param_groups[0]["lr"] == model.dual_learning_rate  # the duals keep theirs


@pytest.mark.parametrize(
    "kwargs, check",
    [
        (dict(), lambda model: isinstance(model.evaluation, RetraceEvaluation)),
        (dict(q_target="n_step"), lambda model: isinstance(model.evaluation, NStepEvaluation)),
        (dict(q_target="n_step", n_steps=3), lambda model: model.replay_buffer.n_steps == 3),
        (dict(train_freq=(1, "episode"), gradient_steps=-1), lambda model: model._n_updates == model.num_timesteps),
        (dict(tau=1.0, target_update_interval=5), None),  # test_target_networks_hard_copy checks the copies
        (dict(per_dim_constraints=False, epsilon_penalty=None), _penalty_off),
        (dict(max_grad_norm=None, learning_rate=lambda progress: 1e-3 * progress), _scheduled),
        (dict(q_target="retrace", segment_length=4), lambda model: model.replay_buffer.segment_length == 4),
        (
            dict(q_target="retrace", retrace_lambda=0.0, policy_kwargs=dict(net_arch=[32], action_bounding="tanh")),
            lambda model: model.actor.action_bounding == "tanh"
            and "train/temperature_penalty" not in model.logger.name_to_value,
        ),
    ],
    ids=["retrace", "n_step", "n_step_3", "episodes", "hard_copy", "no_penalty", "schedule", "segments_4", "tanh"],
)
def test_pendulum_variants(kwargs, check):
    """Every switch of the algorithm trains without error on Pendulum, and does what it says."""
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, **{**SMALL, **kwargs})
    model.learn(300)
    assert model._n_updates > 0
    if check is not None:
        assert check(model) is not False


def test_gradient_temperatures_follow_the_dual_slope_eps_minus_kl():
    """
    With temperature_update="gradient" the E-steps' temperatures are learned: the dual loss's gradient in each η is
    dg/dη = ε − KL(q_η || π_old) (Eq. 9 differentiated; KL over the samples by the loops of tests/brute_force.py), for
    the return's objective and the action penalty's, and training moves η.
    """
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, temperature_update="gradient", **SMALL)
    q_values = th.as_tensor(np.random.default_rng(0).normal(scale=3.0, size=(2, 4, 7)), dtype=th.float32)
    epsilons = [model.epsilon, model.epsilon_penalty]
    temperatures, dual_loss = model.improvement.e_step_temperatures(q_values, epsilons)
    (slopes,) = th.autograd.grad(dual_loss, temperatures)
    for index, epsilon in enumerate(epsilons):
        eta, values = temperatures[index].item(), q_values[index].double().numpy()
        assert slopes[index].item() == pytest.approx(epsilon - brute_force.tilted_kl(values, eta), rel=1e-4, abs=1e-6)
    before = model.multipliers.temperatures.detach().clone()
    model.learn(300)
    assert not th.equal(model.multipliers.temperatures, before)


@pytest.mark.parametrize("penalty_cost, power", [("squared_norm", 2.0), ("norm", 1.0)])
def test_gaussian_policy_loss_is_the_likelihood_of_both_objectives_summed_weights(penalty_cost, power):
    """
    The assembled policy loss of a Box policy at θ = θ_old (its trust-region penalties are then zero): the weighted
    log-likelihood of the sampled actions under N(μ_θ, σ_old) and N(μ_old, σ_θ) (torch.distributions), the weights the
    sum of the return's softmax(Q/η) and MO-MPO's penalty softmax(−d^p/η_penalty), d = ‖a − clip(a)‖ and p the
    ``penalty_cost``'s power (numpy).
    """
    policy_kwargs = dict(net_arch=[16], init_std=1.0)  # wide samples, many of them outside the box
    settings = {**SMALL, "policy_kwargs": policy_kwargs}
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, q_target="n_step", penalty_cost=penalty_cost, **settings)
    model.learn(SMALL["learning_starts"])  # fills replay, no update yet: the actor is its target
    batch = model.evaluation.evaluate(model.replay_buffer.sample(model.batch_size)).improvement
    policy_loss, _, diagnostics = model.improvement.improve(batch)

    actions = batch.actions.double().numpy()  # (N, B, A)
    penalty = -np.sqrt(np.sum((actions - np.clip(actions, -1.0, 1.0)) ** 2, axis=-1)) ** power
    assert (penalty < 0).mean() > 0.1 and (penalty < -1.0).any() and ((penalty < 0) & (penalty > -1.0)).any()
    weights = np.zeros(penalty.shape)
    for values, eta in (
        (batch.q_values.double().numpy(), diagnostics["temperature"]),
        (penalty, diagnostics["temperature_penalty"]),
    ):
        weights += brute_force.softmax_columns(values, eta.item())
    with th.no_grad():
        mean, std = model.actor.distribution_params(batch.observations)
        mean_old, std_old = model.actor_target.distribution_params(batch.observations)
        log_likelihoods = th.distributions.Normal(mean.double(), std_old.double()).log_prob(batch.actions.double()).sum(
            -1
        ) + th.distributions.Normal(mean_old.double(), std.double()).log_prob(batch.actions.double()).sum(-1)
    expected = -(th.as_tensor(weights) * log_likelihoods).sum(0).mean()
    assert policy_loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("per_dim_constraints", [True, False], ids=["per_dim", "joint"])
def test_gaussian_m_step_pays_the_decoupled_trust_regions_away_from_the_old_policy(per_dim_constraints):
    """
    With θ moved off θ_old (the actor's mean and std heads shifted) and the multipliers set apart, the policy loss is the
    weighted likelihood plus α_μ·C_μ + α_Σ·C_Σ, with C_μ = E_s KL(π_old ‖ N(μ_θ, σ_old)) and C_Σ = E_s KL(π_old ‖
    N(μ_old, σ_θ)) (torch.distributions; per action dimension or summed), α held fixed; the multipliers' gradient is
    ε − C through softplus (paper, Appendix D.3), and the diagnostics report the mean KLs.
    """
    settings = {**SMALL, "policy_kwargs": dict(net_arch=[16])}
    env = DummyVecEnv([AsymmetricBoxEnv])  # two action dimensions, so that per-dimension constraints differ
    model = MPO(
        "MlpPolicy", env, seed=0, q_target="n_step", epsilon_penalty=None, per_dim_constraints=per_dim_constraints, **settings
    )
    model.learn(SMALL["learning_starts"])  # fills replay, no update yet: the actor is its target
    multipliers, n_constraints = model.multipliers, 2 if per_dim_constraints else 1
    with th.no_grad():
        model.actor.mu.bias += th.tensor([0.3, -0.2])
        model.actor.std.bias += th.tensor([0.5, -0.4])
        multipliers.raw_alpha_mean.copy_(th.linspace(-1.0, 0.5, n_constraints))
        multipliers.raw_alpha_std.copy_(th.linspace(1.5, 0.2, n_constraints))
    batch = model.evaluation.evaluate(model.replay_buffer.sample(model.batch_size)).improvement
    policy_loss, dual_loss, diagnostics = model.improvement.improve(batch)

    normal, kl_divergence = th.distributions.Normal, th.distributions.kl_divergence
    with th.no_grad():
        mean, std = (tensor.double() for tensor in model.actor.distribution_params(batch.observations))
        mean_old, std_old = (tensor.double() for tensor in model.actor_target.distribution_params(batch.observations))
        kl_mean = kl_divergence(normal(mean_old, std_old), normal(mean, std_old)).mean(0)  # (A,)
        kl_std = kl_divergence(normal(mean_old, std_old), normal(mean_old, std)).mean(0)
        if not per_dim_constraints:
            kl_mean, kl_std = kl_mean.sum(-1, keepdim=True), kl_std.sum(-1, keepdim=True)
        actions = batch.actions.double()
        log_likelihoods = normal(mean, std_old).log_prob(actions).sum(-1) + normal(mean_old, std).log_prob(actions).sum(-1)
    assert kl_mean.min() > 1e-3 and kl_std.min() > 1e-3, "θ is away from θ_old in every constrained half"
    weights = brute_force.softmax_columns(batch.q_values.double().numpy(), diagnostics["temperature"].item())
    alpha_mean = F.softplus(multipliers.raw_alpha_mean.detach().double()) + multipliers.floor
    alpha_std = F.softplus(multipliers.raw_alpha_std.detach().double()) + multipliers.floor
    likelihood = -(th.as_tensor(weights) * log_likelihoods).sum(0).mean()
    expected = likelihood + (alpha_mean * kl_mean).sum() + (alpha_std * kl_std).sum()
    assert policy_loss.item() == pytest.approx(expected.item(), rel=1e-5)

    raw = [multipliers.raw_alpha_mean, multipliers.raw_alpha_std]
    assert all(grad is None for grad in th.autograd.grad(policy_loss, raw, retain_graph=True, allow_unused=True))
    grad_mean, grad_std = th.autograd.grad(dual_loss, raw)
    for grad, raw_alpha, epsilon, kl in (
        (grad_mean, raw[0], model.epsilon_mean, kl_mean),
        (grad_std, raw[1], model.epsilon_std, kl_std),
    ):
        expected_grad = th.sigmoid(raw_alpha.detach().double()) * (epsilon - kl)
        th.testing.assert_close(grad.double(), expected_grad, rtol=1e-5, atol=1e-8)
    assert diagnostics["kl_mean"].item() == pytest.approx(kl_mean.mean().item(), rel=1e-5)
    assert diagnostics["kl_std"].item() == pytest.approx(kl_std.mean().item(), rel=1e-5)


@pytest.mark.parametrize("q_target", ["n_step", "retrace"])
def test_dict_observations(q_target):
    """MultiInputPolicy trains on Dict observations (vector + image) with continuous actions."""
    env = SimpleMultiObsEnv(random_start=True, discrete_actions=False)
    model = MPO("MultiInputPolicy", env, seed=0, q_target=q_target, **SMALL)
    model.learn(150)
    obs, _ = env.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(action)


@pytest.mark.parametrize("share_features_extractor", [False, True])
def test_image_observations(share_features_extractor):
    """CnnPolicy trains on images; a shared extractor is trained by the critic only."""
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=False)
    policy_kwargs = dict(
        net_arch=[16], share_features_extractor=share_features_extractor, features_extractor_kwargs=dict(features_dim=16)
    )
    model = MPO("CnnPolicy", env, seed=0, buffer_size=500, **{**SMALL, "policy_kwargs": policy_kwargs})
    assert (model.actor.features_extractor is model.critic.features_extractor) == share_features_extractor
    model.learn(120)
    assert model._n_updates > 0


def test_multiple_envs_and_vecnormalize():
    """n_envs=2 with VecNormalize: all envs feed replay and training runs on normalised observations and rewards."""
    env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=2, seed=0), gamma=0.99)
    model = MPO("MlpPolicy", env, seed=0, **SMALL)
    model.learn(300)
    assert model.num_timesteps >= 300
    assert model.replay_buffer.size() * 2 >= 300
    assert np.abs(env.obs_rms.mean).sum() > 0  # statistics were updated


def test_retrace_with_subprocess_envs():
    """Retrace trains with 4 SubprocVecEnv workers, and every sampled segment follows one environment's stream."""
    env = make_vec_env("Pendulum-v1", n_envs=4, seed=0, vec_env_cls=SubprocVecEnv)
    model = MPO("MlpPolicy", env, seed=0, q_target="retrace", segment_length=4, **SMALL)
    model.learn(400)
    env.close()
    assert model._n_updates > 0
    segments = model.replay_buffer.sample(64)
    valid = segments.valid.numpy() > 0.5
    observations, next_observations = segments.observations.numpy(), segments.next_observations.numpy()
    follows = np.all(np.isclose(observations[:, 1:], next_observations[:, :-1]), axis=-1)  # s_{t+1} of step t is s_{t+1}
    assert np.all(follows[valid[:, 1:]])
    assert valid[:, 1:].any()


def test_logger_keys(tmp_path):
    """The documented training diagnostics reach SB3's logger."""
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, **SMALL)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(200, log_interval=1)
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    for key in [
        "train/critic_loss",
        "train/actor_loss",
        "train/temperature",
        "train/alpha_mean",
        "train/alpha_std",
        "train/kl_q",
        "train/kl_mean",
        "train/kl_std",
        "train/q_mean",
        "train/n_updates",
        "train/temperature_penalty",
        "train/mean_outside_box",
    ]:
        assert key in header, key


@pytest.mark.parametrize("bias, outside", [(2.0, 1.0), (-1.5, 1.0), (0.5, 0.0)])
def test_mean_outside_box_is_the_share_of_policy_means_beyond_the_box(bias, outside):
    """With clipped actions the logger counts the mean's components beyond [-1, 1]."""
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, **SMALL)
    model.learn(60)
    with th.no_grad():  # a policy whose mean is `bias` at every state
        model.actor.mu.weight.zero_()
        model.actor.mu.bias.fill_(bias)
    model.train(1, 32)
    assert model.logger.name_to_value["train/mean_outside_box"] == outside


def test_deterministic_mean_action_is_the_clipped_gaussians_mean_and_survives_save_load(tmp_path):
    """deterministic_action="mean" predicts E[clip(u)], here the censored normal's mean, rescaled to Pendulum's box."""
    kwargs = {**SMALL, "policy_kwargs": dict(net_arch=[32], deterministic_action="mean")}
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, **kwargs)
    model.learn(60)
    with th.no_grad():  # a policy whose mean is 1.3 (beyond the box) at every state
        model.actor.mu.weight.zero_()
        model.actor.mu.bias.fill_(1.3)
    obs = np.stack([model.observation_space.sample() for _ in range(8)])
    with th.no_grad():
        std = model.actor.distribution_params(model.policy.obs_to_tensor(obs)[0])[1].numpy()
    # censored N(1.3, σ²) on [-1, 1]: -P(u < -1) + P(u > 1) + ∫ u φ over the box, by quadrature
    inside = np.vectorize(lambda s: integrate.quad(lambda u: u * stats.norm.pdf(u, 1.3, s), -1.0, 1.0)[0])(std)
    expected = 2.0 * (-stats.norm.cdf(-1.0, 1.3, std) + stats.norm.sf(1.0, 1.3, std) + inside)  # Pendulum: [-2, 2]
    np.testing.assert_allclose(model.predict(obs, deterministic=True)[0], expected, atol=1e-5)
    model.save(tmp_path / "model")
    loaded = MPO.load(tmp_path / "model")
    assert loaded.actor.deterministic_action == "mean"
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], expected, atol=1e-5)
    mode = MPO("MlpPolicy", "Pendulum-v1", seed=0, **{**SMALL, "policy_kwargs": dict(net_arch=[32])})  # the mode, clip(μ)
    mode.actor.load_state_dict(model.actor.state_dict())
    np.testing.assert_allclose(mode.predict(obs, deterministic=True)[0], 2.0)
    with pytest.raises(
        ValueError, match=r"policy_kwargs\['deterministic_action'\]='median' is invalid, expected one of 'mode', 'mean'"
    ):
        MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(deterministic_action="median"))
    tanh = r"deterministic_action='mean' is invalid with action_bounding='tanh': the mean of"
    with pytest.raises(ValueError, match=tanh):
        MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(deterministic_action="mean", action_bounding="tanh"))
    discrete = r"deterministic_action='mean' is invalid with a Discrete action space .*expected its default 'mode'"
    with pytest.raises(ValueError, match=discrete):
        MPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(deterministic_action="mean"))


def test_tanh_squashed_policies_log_no_mean_outside_box():
    """A tanh-squashed policy has no box for its mean to leave: the key is absent, beside the other diagnostics."""
    squashed = MPO(
        "MlpPolicy", "Pendulum-v1", seed=0, **{**SMALL, "policy_kwargs": dict(net_arch=[32], action_bounding="tanh")}
    )
    squashed.learn(60)
    logged = squashed.logger.name_to_value
    assert "train/std_mean" in logged and "train/mean_outside_box" not in logged


def test_callbacks_progress_bar_tensorboard(tmp_path):
    """Callbacks, the progress bar and tensorboard logging work as with SAC."""
    eval_env = make_vec_env("Pendulum-v1", n_envs=1, seed=1)
    callbacks = [
        CheckpointCallback(save_freq=100, save_path=str(tmp_path / "ckpt"), name_prefix="mpo"),
        EvalCallback(eval_env, eval_freq=100, n_eval_episodes=1, log_path=str(tmp_path / "eval")),
    ]
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, tensorboard_log=str(tmp_path / "tb"), **SMALL)
    model.learn(200, callback=callbacks, progress_bar=True)
    assert len(glob.glob(str(tmp_path / "ckpt" / "mpo_*_steps.zip"))) == 2
    assert (tmp_path / "eval" / "evaluations.npz").exists()
    assert glob.glob(str(tmp_path / "tb" / "MPO_1" / "events.out.tfevents.*"))


def test_target_networks_hard_copy():
    """tau=1 with target_update_interval=K copies the online networks into the targets every K updates only."""
    model = MPO("MlpPolicy", IdentityEnvBox(ep_length=10), seed=0, tau=1.0, target_update_interval=4, **SMALL)
    model.learn(50 + 6)  # learning starts after 50 steps; 6 updates: a copy at update 4, none since
    assert model._n_updates == 6

    def same(a, b):
        return all(th.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))

    assert not same(model.critic, model.critic_target) and not same(model.actor, model.actor_target)
    model.learn(2, reset_num_timesteps=False)  # updates 7 and 8: copy at 8
    assert same(model.critic, model.critic_target) and same(model.actor, model.actor_target)


@pytest.mark.parametrize("batch_renorm", [False, True], ids=["target_critic", "batch_renorm"])
def test_soft_target_update_moves_each_target_a_tau_share_towards_its_network(batch_renorm):
    """
    After one update with tau=0.3 each target parameter is 0.7·itself + 0.3·the updated network's (Polyak); CrossQ's
    critic (batch_renorm) has no target network to move, so its copy stays as it was.
    """
    policy_kwargs = dict(net_arch=[16], batch_renorm=batch_renorm)
    model = MPO("MlpPolicy", IdentityEnvBox(ep_length=10), seed=0, tau=0.3, **{**SMALL, "policy_kwargs": policy_kwargs})
    model.learn(60)
    pairs = [(model.actor, model.actor_target), (model.critic, model.critic_target)]
    before = [[param.detach().clone() for param in target.parameters()] for _, target in pairs]
    model.train(gradient_steps=1, batch_size=model.batch_size)
    for (network, target), old_target in zip(pairs, before, strict=True):
        for param, target_param, old in zip(network.parameters(), target.parameters(), old_target, strict=True):
            if network is model.critic and batch_renorm:
                assert th.equal(target_param, old)
            else:
                th.testing.assert_close(target_param, 0.7 * old + 0.3 * param.detach())
    assert not all(th.equal(param, old) for param, old in zip(model.actor_target.parameters(), before[0], strict=True))


@pytest.mark.parametrize("max_grad_norm", [1e-3, None])
def test_gradients_are_clipped_to_max_grad_norm_and_reported_before_clipping(max_grad_norm):
    """
    The actor's and the critic's optimisers step on gradients of norm at most max_grad_norm, and the update reports each
    norm as it was before clipping (with no clipping, the norm the optimiser steps on).
    """
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, max_grad_norm=max_grad_norm, **SMALL)
    model.learn(60)
    stepped = {}
    for name in ("critic", "actor"):
        optimizer = getattr(model, name).optimizer

        def record(*args, _name=name, _optimizer=optimizer, _step=optimizer.step, **kwargs):
            grads = [param.grad for group in _optimizer.param_groups for param in group["params"] if param.grad is not None]
            stepped[_name] = float(np.sqrt(sum(float((grad.double() ** 2).sum()) for grad in grads)))
            return _step(*args, **kwargs)

        optimizer.step = record
    reported = model._gradient_step(model.replay_buffer.sample(model.batch_size))
    for name in ("critic", "actor"):
        norm = reported[f"{name}_grad_norm"].item()
        if max_grad_norm is None:
            assert stepped[name] == pytest.approx(norm, rel=1e-5)
        else:
            assert norm > 10 * max_grad_norm, "the gradient was larger than the bound"
            assert stepped[name] == pytest.approx(max_grad_norm, rel=1e-3)


@pytest.mark.parametrize(
    "actor_learning_rate, expected",
    [(None, 1e-3), (1e-5, 1e-5), (lambda progress: 2e-5 * progress, 2e-5 * (1 - 51 / 1000))],
)
def test_adams_first_step_moves_the_actor_by_its_own_learning_rate(actor_learning_rate, expected):
    """
    Adam's first step moves each parameter by its learning rate times g / (|g| + eps) (bias-corrected moments of one
    gradient), so the largest change of a network's parameters in the first update is its rate: the actor's
    ``actor_learning_rate`` (a schedule read at the progress of that update), the critic's ``learning_rate``.
    """
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, learning_rate=1e-3, actor_learning_rate=actor_learning_rate, **SMALL)
    initial = 1e-3 if actor_learning_rate is None else FloatSchedule(actor_learning_rate)(1.0)
    assert model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(initial), "the built model shows its rate"
    before = {
        name: th.nn.utils.parameters_to_vector(getattr(model, name).parameters()).clone() for name in ("actor", "critic")
    }
    model.learn(1000, callback=StopAfterFirstUpdate())  # the update after env step 51 (learning_starts=50)
    assert model._n_updates == 1
    rates = {"actor": expected, "critic": 1e-3}
    for name, rate in rates.items():
        moved = (th.nn.utils.parameters_to_vector(getattr(model, name).parameters()) - before[name]).abs().max().item()
        assert moved == pytest.approx(rate, rel=1e-2), name  # float32 parameters near 0.1 round their change at ~1e-8
        assert getattr(model, name).optimizer.param_groups[0]["lr"] == pytest.approx(rate), name


@pytest.mark.parametrize("action_bounding", ["clip", "tanh"])
def test_behaviour_log_probs_recorded(action_bounding):
    """Retrace's replay records log b(u) of each stored action: uniform warm-up density, then the policy's Gaussian."""
    from sb3_mpo.mpo.losses import gaussian_log_prob

    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = MPO(
        "MlpPolicy",
        env,
        seed=0,
        q_target="retrace",
        gradient_steps=0,  # no update during the test: the behaviour policy stays the current actor
        **{**SMALL, "learning_starts": 20, "policy_kwargs": dict(net_arch=[16], action_bounding=action_bounding)},
    )
    model.learn(40)
    buffer = model.replay_buffer
    warmup_u, warmup_log_b = buffer.actions[:10], buffer.behaviour_log_probs[:10]  # 10 rows x 2 envs = 20 steps
    expected = -np.log(2.0) * np.ones_like(warmup_log_b)
    if action_bounding == "tanh":
        expected += np.log(1 - np.tanh(warmup_u[..., 0]) ** 2)
    np.testing.assert_allclose(warmup_log_b, expected, rtol=1e-4, atol=1e-4)
    obs = th.as_tensor(buffer.observations[10:20].reshape(20, -1))
    with th.no_grad():
        mean, std = model.actor.distribution_params(obs)
        log_b = gaussian_log_prob(th.as_tensor(buffer.actions[10:20].reshape(20, -1)), mean, std)
    np.testing.assert_allclose(buffer.behaviour_log_probs[10:20].reshape(-1), log_b.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon_mean=-1e-3), "epsilon_mean"),
        (dict(epsilon_std=0.0), "epsilon_std"),
        (dict(epsilon_penalty=0.0), "epsilon_penalty"),
        (dict(n_action_samples=1), "n_action_samples"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=lambda _: -1.0), "learning_rate"),
        (dict(dual_learning_rate=-0.1), "dual_learning_rate"),
        (dict(batch_size=0), "batch_size"),
        (dict(buffer_size=10, batch_size=32), "buffer_size"),
        (dict(tau=0.0), "tau"),
        (dict(init_temperature=0.0), "init_temperature"),
        (dict(target_update_interval=0), "target_update_interval"),
        (dict(q_target="lambda"), "q_target"),
        (dict(q_target="retrace", n_steps=3), "n_steps"),
        (dict(n_steps=3), "n_steps"),  # Retrace is the default: n-step returns need q_target='n_step'
        (dict(retrace_lambda=1.5), "retrace_lambda"),
        (dict(segment_length=0), "segment_length"),
    ],
)
def test_bad_hyperparameters(kwargs, name):
    """Bad hyperparameters fail at construction with an error naming the parameter and what it accepts."""
    with pytest.raises(ValueError, match=rf"^MPO: (.* )?{name}=\S+ .*expected"):
        MPO("MlpPolicy", "Pendulum-v1", **kwargs)


def test_retrace_is_the_default_and_a_transition_buffer_needs_n_step_targets():
    """The default critic target is Retrace on a segment buffer; a user's transition buffer is refused with the way out."""
    model = MPO("MlpPolicy", "Pendulum-v1")
    assert model.q_target == "retrace" and isinstance(model.replay_buffer, SegmentReplayBuffer)
    with pytest.raises(ValueError, match=r"replay_buffer_class=ReplayBuffer is invalid.*q_target='n_step'"):
        MPO("MlpPolicy", "Pendulum-v1", replay_buffer_class=ReplayBuffer)
    with pytest.raises(ValueError, match=r"n_steps=3 is invalid.*pass q_target='n_step'"):
        MPO("MlpPolicy", "Pendulum-v1", n_steps=3)
    assert (
        type(MPO("MlpPolicy", "Pendulum-v1", q_target="n_step", replay_buffer_class=ReplayBuffer).replay_buffer)
        is ReplayBuffer
    )


def test_her_relabelled_goals_reach_the_update_and_its_buffer_resumes(tmp_path):
    """
    SB3's HerReplayBuffer trains MPO's n-step critic: on 10 bits, where no collected step reached its goal, the batches
    the update reads hold HER's relabelled successes (reward 0); the saved model and buffer resume training.
    """
    env_kwargs = dict(n_bits=10, continuous=True, max_steps=10)
    her = dict(n_sampled_goal=4, goal_selection_strategy="future")
    kwargs = dict(q_target="n_step", replay_buffer_class=HerReplayBuffer, replay_buffer_kwargs=her, learning_starts=64,
                  batch_size=32, policy_kwargs=dict(net_arch=[16]), seed=0)  # fmt: skip
    model = MPO("MultiInputPolicy", BitFlippingEnv(**env_kwargs), **kwargs)
    sampled_rewards = []
    sample = model.replay_buffer.sample

    def recording_sample(*args, **sample_kwargs):
        batch = sample(*args, **sample_kwargs)
        sampled_rewards.append(batch.rewards.flatten())
        return batch

    model.replay_buffer.sample = recording_sample
    model.learn(300)
    stored = model.replay_buffer.rewards[: model.replay_buffer.pos]
    assert np.all(stored == -1.0), "a collected step reached its goal: the relabelling check below proves nothing"
    assert len(sampled_rewards) == model._n_updates > 0
    assert (th.cat(sampled_rewards) == 0.0).any()
    del model.replay_buffer.sample  # the buffer's own method again, which pickles
    model.save(tmp_path / "model")
    model.save_replay_buffer(tmp_path / "buffer")
    loaded = MPO.load(tmp_path / "model", env=BitFlippingEnv(**env_kwargs))
    loaded.load_replay_buffer(tmp_path / "buffer")
    assert isinstance(loaded.replay_buffer, HerReplayBuffer) and loaded.replay_buffer.pos == model.replay_buffer.pos
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.num_timesteps == 400 and loaded._n_updates > model._n_updates


def test_bad_policy_and_spaces():
    """Unknown policy names and unsupported action spaces are refused with the accepted values."""
    with pytest.raises(ValueError, match=r"policy='MlpPolicyy'.*MlpPolicy"):
        MPO("MlpPolicyy", "Pendulum-v1")

    class UnboundedEnv(AsymmetricBoxEnv):
        action_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)

    with pytest.raises(ValueError, match="bounded Box"):
        MPO("MlpPolicy", UnboundedEnv())
    with pytest.raises(ValueError, match="action_bounding"):
        MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(action_bounding="sigmoid"))


def test_non_finite_reward_stops_before_any_update():
    """
    A NaN reward in replay stops training with an error naming the quantity and the update; parameters stay finite and
    unchanged. MPO refuses to store one (tests/test_checks.py), so this one is written into the buffer directly.
    """

    class PoisonReplay(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == 100:
                buffer = self.model.replay_buffer
                buffer.rewards[buffer.pos - 1] = np.nan
            return True

    model = MPO("MlpPolicy", DummyVecEnv([AsymmetricBoxEnv]), seed=0, **{**SMALL, "learning_starts": 40})
    # Updates between steps 40 and 100 succeed; the NaN transition is sampled soon after step 100
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    with pytest.raises(NonFiniteError, match=r"critic_loss=nan.*gradient update \d+"):
        model.learn(400, callback=PoisonReplay())
    after = model.policy.state_dict()
    assert all(th.isfinite(v).all() for v in after.values())
    assert all(th.isfinite(p).all() for p in model.multipliers.parameters())
    assert any(not th.equal(before[k], after[k]) for k in before)  # some updates happened before the NaN was met


def _model_state(model: MPO) -> dict[str, th.Tensor]:
    """Every tensor of the model that an update may write: networks, running statistics, multipliers, PopArt."""
    modules = {"policy": model.policy, "multipliers": model.multipliers, "popart": model.value_normalizer}
    return {
        f"{owner}.{name}": tensor.clone()
        for owner, module in modules.items()
        if module is not None
        for name, tensor in module.state_dict().items()
    }


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the solved temperatures
        {"value_normalization": True},  # PopArt's statistics and the critics' output layers
        {"policy_kwargs": dict(net_arch=[32, 32], batch_renorm=True)},  # BatchRenorm's running statistics
    ],
    ids=["temperatures", "popart", "batch_renorm"],
)
@pytest.mark.parametrize("reload", [False, True], ids=["trained", "loaded"])
def test_non_finite_update_leaves_the_model_as_it_was(settings, reload, tmp_path):
    """
    The update that meets a NaN reward raises and leaves every tensor of the model exactly as before it, including
    what computing the losses writes in place (temperatures, PopArt, BatchRenorm): training can go on after the error.
    A loaded model restores its own tensors too, not those of the model it was saved from.
    """
    env = DummyVecEnv([AsymmetricBoxEnv])
    model = MPO("MlpPolicy", env, seed=0, **{**SMALL, "learning_starts": 40, **settings})
    model.learn(60)  # some updates succeed first
    if reload:
        model.save(tmp_path / "model")
        model.save_replay_buffer(tmp_path / "buffer")
        model = MPO.load(tmp_path / "model", env=env)
        model.load_replay_buffer(tmp_path / "buffer")
        model.set_logger(configure(None, []))  # learn() would set one
    compute_losses, states = model._compute_losses, []

    def recording(replay_data):
        states.append(_model_state(model))
        return compute_losses(replay_data)

    model._compute_losses = recording
    model.replay_buffer.rewards[: model.replay_buffer.pos] = np.nan
    with pytest.raises(NonFiniteError, match="nothing of the model was updated"):
        model.train(gradient_steps=1, batch_size=model.batch_size)
    after = _model_state(model)
    assert after.keys() == states[-1].keys()
    changed = [name for name, tensor in states[-1].items() if not th.equal(tensor, after[name])]
    assert not changed, f"written by the failed update: {changed}"
    assert all(th.isfinite(tensor).all() for tensor in after.values() if tensor.is_floating_point())


class BatchNormExtractor(BaseFeaturesExtractor):
    """Observations through BatchNorm: a features extractor with running statistics."""

    def __init__(self, observation_space: spaces.Box):
        super().__init__(observation_space, features_dim=int(np.prod(observation_space.shape)))
        self.norm = th.nn.BatchNorm1d(self.features_dim)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.norm(observations.flatten(1))


@pytest.mark.parametrize("share_features_extractor", [False, True])
def test_target_networks_copy_the_running_statistics_of_batch_norm(share_features_extractor):
    """
    A features extractor's BatchNorm statistics move as the networks train, and the target actor and target critic
    (in evaluation mode, which reads them) copy them at each target update, as SB3's SAC does for its critic.
    """
    policy_kwargs = dict(
        net_arch=[32, 32], features_extractor_class=BatchNormExtractor, share_features_extractor=share_features_extractor
    )
    model = MPO("MlpPolicy", DummyVecEnv([AsymmetricBoxEnv]), seed=0, **{**SMALL, "policy_kwargs": policy_kwargs})
    model.learn(120)
    assert model._n_updates > 0 and not model.actor_target.training and not model.critic_target.training
    for network, target in ((model.actor, model.actor_target), (model.critic, model.critic_target)):
        statistics, target_statistics = network.features_extractor.norm, target.features_extractor.norm
        assert int(statistics.num_batches_tracked) > 0, "the statistics moved"
        th.testing.assert_close(target_statistics.running_mean, statistics.running_mean, rtol=0, atol=0)
        th.testing.assert_close(target_statistics.running_var, statistics.running_var, rtol=0, atol=0)
