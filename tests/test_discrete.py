"""Categorical MPO: Discrete action spaces, image observations (CnnPolicy, Atari) and the spaces MPO refuses."""

import ale_py
import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, IdentityEnv, IdentityEnvMultiBinary, IdentityEnvMultiDiscrete
from stable_baselines3.common.vec_env import SubprocVecEnv, VecFrameStack

from sb3_mpo import MPO
from sb3_mpo.common.buffers import SegmentReplayBuffer
from sb3_mpo.mpo.policies import CategoricalActor

import brute_force

SMALL = dict(learning_starts=50, batch_size=32, policy_kwargs=dict(net_arch=[32, 32]))


@pytest.mark.parametrize("q_target", ["n_step", "retrace"])
def test_discrete_trains_and_logs(q_target):
    """MPO trains on CartPole with both critic targets; the categorical diagnostics are logged and finite."""
    model = MPO("MlpPolicy", "CartPole-v1", seed=0, q_target=q_target, **SMALL)
    assert isinstance(model.actor, CategoricalActor)
    model.learn(300)
    assert model._n_updates > 0
    logged = model.logger.name_to_value
    for key in ("train/alpha_policy", "train/kl_policy", "train/kl_q", "train/temperature", "train/entropy"):
        assert np.isfinite(logged[key]), key
    assert "train/alpha_mean" not in logged  # Gaussian-only multipliers do not exist for a categorical policy
    assert set(dict(model.multipliers.named_parameters())) == {"raw_alpha_policy"}
    assert set(dict(model.multipliers.named_buffers())) == {"raw_temperatures"}
    actions, _ = model.predict(model.env.observation_space.sample()[None], deterministic=False)
    assert actions.shape == (1,) and model.action_space.contains(int(actions[0]))


def test_critic_outputs_every_action_and_targets_are_exact():
    """The critic returns Q(s, a) for all actions; the improvement batch's E_pi Q' is the exact sum over actions."""
    model = MPO("MlpPolicy", "CartPole-v1", seed=1, **SMALL)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(7)]))
    assert model.critic(obs).shape == (7, 2)
    batch, _ = model.improvement.target_values(obs)
    probs = batch.log_probs_old.exp()
    th.testing.assert_close(probs.sum(-1), th.ones(7))
    expected = batch.q_values[:, 0] * probs[:, 0] + batch.q_values[:, 1] * probs[:, 1]
    th.testing.assert_close(batch.expected_q(), expected)


def test_categorical_m_step_respects_trust_region():
    """Many M-steps on a fixed batch keep the mean KL(pi_old || pi) near epsilon_policy: the multiplier grows until it does."""
    model = MPO("MlpPolicy", "CartPole-v1", seed=2, epsilon_policy=1e-3, dual_learning_rate=0.1, **SMALL)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(64)]))
    with th.no_grad():
        batch, _ = model.improvement.target_values(obs)
    # Make one action look far better, so the unconstrained M-step would move the policy a long way
    batch = batch._replace(q_values=th.stack([th.zeros(64), 50.0 * th.ones(64)], dim=-1))
    optimizers = [model.actor.optimizer, model.multipliers_optimizer]
    kls = []
    for _ in range(300):
        policy_loss, dual_loss, diagnostics = model.improvement.improve(batch)
        for optimizer in optimizers:
            optimizer.zero_grad()
        (policy_loss + dual_loss).backward()
        for optimizer in optimizers:
            optimizer.step()
        kls.append(diagnostics["kl_policy"].item())
    assert model.multipliers.alpha("policy").item() > 1.0
    assert np.mean(kls[-50:]) < 5e-3
    # The policy did move toward the better action
    assert model.actor.log_probs(obs)[:, 1].exp().mean() > batch.log_probs_old[:, 1].exp().mean()


def test_discrete_learns_identity():
    """On SB3's IdentityEnv (reward 1 when the action equals the observed state), categorical MPO becomes near perfect."""
    env = IdentityEnv(dim=4, ep_length=20)
    model = MPO("MlpPolicy", env, seed=0, learning_starts=200, batch_size=64, learning_rate=1e-3, gamma=0.5)
    model.learn(2500)
    eval_env = IdentityEnv(dim=4, ep_length=20)
    correct = 0
    obs, _ = eval_env.reset(seed=3)
    for _ in range(200):
        action, _ = model.predict(obs, deterministic=True)
        correct += int(action) == int(obs)
        obs, *_ = eval_env.step(action)
    assert correct >= 190, correct


def test_discrete_segments_with_subprocesses():
    """Retrace with 2 subprocess workers stores one behaviour log-probability per transition and trains."""
    env = make_vec_env("CartPole-v1", n_envs=2, vec_env_cls=SubprocVecEnv, seed=0)
    model = MPO("MlpPolicy", env, seed=0, q_target="retrace", segment_length=4, **SMALL)
    model.learn(200)
    buffer = model.replay_buffer
    assert isinstance(buffer, SegmentReplayBuffer)
    stored = buffer.behaviour_log_probs[: buffer.pos]
    # Warm-up actions are uniform over 2 actions, policy actions have log-probabilities in (-inf, 0]
    np.testing.assert_allclose(stored[:25], np.log(0.5))
    assert np.all(stored <= 0) and np.all(np.isfinite(stored))
    env.close()


@pytest.mark.parametrize("share_features_extractor", [False, True])
def test_cnn_policy_discrete_images(tmp_path, share_features_extractor):
    """CnnPolicy (NatureCNN) trains on discrete image observations and saves/loads with identical predictions."""
    env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    kwargs = dict(share_features_extractor=share_features_extractor, net_arch=[32])
    model = MPO("CnnPolicy", env, seed=0, buffer_size=500, learning_starts=30, batch_size=16, policy_kwargs=kwargs)
    model.learn(80)
    if share_features_extractor:
        assert model.actor.features_extractor is model.critic.features_extractor
    else:
        assert model.actor.features_extractor is not model.critic.features_extractor
    obs = np.stack([env.observation_space.sample() for _ in range(5)])
    path = tmp_path / "cnn_discrete.zip"
    model.save(path)
    loaded = MPO.load(path)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_discrete_save_load_resumes(tmp_path):
    """A saved categorical model restores its multipliers and optimisers and keeps training."""
    model = MPO("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    model.learn(200)
    model.save(tmp_path / "cartpole.zip")
    loaded = MPO.load(tmp_path / "cartpole.zip", env=make_vec_env("CartPole-v1", n_envs=1))
    for name, value in model.multipliers.state_dict().items():
        assert th.equal(value, loaded.multipliers.state_dict()[name]), name
    assert loaded.multipliers_optimizer.state_dict()["state"], "the dual optimiser's moments were not restored"
    assert loaded.actor.optimizer.state_dict()["state"], "the actor optimiser's moments were not restored"
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.num_timesteps == 300


@pytest.mark.parametrize(
    "env",
    [IdentityEnvMultiDiscrete(dim=2), IdentityEnvMultiBinary(dim=2)],
    ids=["MultiDiscrete", "MultiBinary"],
)
def test_multi_discrete_and_multi_binary_are_refused(env):
    """Spaces MPO does not support are refused at construction, with the supported ones named."""
    with pytest.raises(ValueError, match=r"supports Box \(continuous, bounded\) and Discrete.*MultiDiscrete, MultiBinary"):
        MPO("MlpPolicy", env)


def test_single_action_is_refused():
    class OneActionEnv(IdentityEnv):
        def __init__(self):
            super().__init__(dim=1)
            self.action_space = spaces.Discrete(1)

    with pytest.raises(ValueError, match="at least 2 actions"):
        MPO("MlpPolicy", OneActionEnv())


def test_categorical_m_step_is_the_weighted_likelihood_plus_its_trust_region_away_from_the_old_policy():
    """
    With π moved off π_old (its logits shifted) and α set: the policy loss is −mean_s Σ_a q(a|s) log π(a|s) + α·C with
    q ∝ π_old·exp(Q'/η) (a Python loop) and C = mean_s KL(π_old ‖ π) (torch.distributions), α held fixed; the
    multiplier's gradient is ε_policy − C through softplus (paper, Sec. 3.3, Eq. (12) relaxed).
    """
    model = MPO("MlpPolicy", "CartPole-v1", seed=4, **SMALL)
    multipliers = model.multipliers
    with th.no_grad():
        model.actor.logits[-1].bias += th.tensor([0.8, -0.5])
        multipliers.raw_alpha_policy.fill_(0.7)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(16)]))
    batch, _ = model.improvement.target_values(obs)
    policy_loss, dual_loss, diagnostics = model.improvement.improve(batch)

    with th.no_grad():
        old = th.distributions.Categorical(logits=model.actor_target.log_probs(obs).double())
        new = th.distributions.Categorical(logits=model.actor.log_probs(obs).double())
        kl = th.distributions.kl_divergence(old, new).mean()
    assert kl > 1e-2, "π is away from π_old"
    eta = diagnostics["temperature"].item()
    weights = brute_force.softmax_columns(batch.q_values.double().numpy().T, eta, old.probs.numpy().T)  # (n_actions, B)
    likelihood = -(th.as_tensor(weights.T) * new.logits).sum(-1).mean()
    alpha = th.nn.functional.softplus(th.tensor(0.7, dtype=th.float64)) + multipliers.floor
    assert policy_loss.item() == pytest.approx((likelihood + alpha * kl).item(), rel=1e-5)
    (grad,) = th.autograd.grad(dual_loss, [multipliers.raw_alpha_policy])
    expected = th.sigmoid(th.tensor(0.7, dtype=th.float64)) * (model.epsilon_policy - kl)
    assert grad.item() == pytest.approx(expected.item(), rel=1e-5)
    assert diagnostics["kl_policy"].item() == pytest.approx(kl.item(), rel=1e-5)


def test_atari_breakout_trains_and_saves(tmp_path):
    """Breakout with SB3's Atari wrappers and 4 stacked frames: CnnPolicy trains a few thousand steps and reloads."""
    gym.register_envs(ale_py)
    env = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=1, seed=0), n_stack=4)
    model = MPO(
        "CnnPolicy",
        env,
        seed=0,
        buffer_size=5_000,
        learning_starts=1_000,
        batch_size=32,
        train_freq=4,
        optimize_memory_usage=True,
        replay_buffer_kwargs=dict(handle_timeout_termination=False),
    )
    model.learn(3_000)
    assert model._n_updates >= 400
    path = tmp_path / "breakout.zip"
    model.save(path)
    loaded = MPO.load(path, env=env)
    obs = env.reset()
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    loaded.learn(200, reset_num_timesteps=False)
    env.close()
