"""State Marginal Matching: the reward and its terms, the models, skills, historical averaging, the environment and metrics."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from scipy import stats
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import SimpleMultiObsEnv

from sb3_mpo import MPO
from sb3_mpo.exploration import (
    SMM,
    HistoricalAveragePolicy,
    PointRoomsEnv,
    PolicySnapshots,
    SkillWrapper,
    SMMReplayBuffer,
    metrics,
    smm_reward,
)
from sb3_mpo.exploration.envs import room_of
from sb3_mpo.exploration.smm import gaussian_elbo

SPACE = gym.spaces.Box(0.0, 1.0, shape=(2 + 4,), dtype=np.float32)  # a 2-D state and 4 skills


def augmented(states: np.ndarray, skills: np.ndarray, n_skills: int) -> th.Tensor:
    return th.as_tensor(np.concatenate([states, np.eye(n_skills)[skills]], axis=1), dtype=th.float32)


def test_gaussian_elbo_matches_torch_distributions():
    """log N(s; mu, sigma) - KL(N(m, v) || N(0, 1)) computed with torch.distributions."""
    gen = th.Generator().manual_seed(0)
    states, recon = th.randn(5, 3, generator=gen, dtype=th.float64), th.randn(5, 3, generator=gen, dtype=th.float64)
    recon_log_std, latent_mean = th.randn(3, generator=gen, dtype=th.float64), th.randn(5, 2, generator=gen, dtype=th.float64)
    latent_log_std = 0.3 * th.randn(5, 2, generator=gen, dtype=th.float64)
    expected = th.distributions.Normal(recon, recon_log_std.exp()).log_prob(states).sum(-1) - th.distributions.kl_divergence(
        th.distributions.Normal(latent_mean, latent_log_std.exp()), th.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    th.testing.assert_close(gaussian_elbo(states, recon, recon_log_std, latent_mean, latent_log_std), expected)


def test_reward_terms_have_the_papers_signs():
    """r = log p* - log q + log d - log p(z): each term moves the reward the paper's way, scaled by its coefficient."""
    base = dict(log_target=th.tensor([-1.0]), log_density=th.tensor([0.5]), log_discriminator=th.tensor([-0.7]))
    reward = smm_reward(**base, log_prior=-math.log(4))
    assert reward.item() == pytest.approx(-1.0 - 0.5 + (-0.7 + math.log(4)))
    up = th.tensor([1.0])
    assert smm_reward(**{**base, "log_target": base["log_target"] + up}, log_prior=-math.log(4)) > reward  # target: +
    assert smm_reward(**{**base, "log_density": base["log_density"] + up}, log_prior=-math.log(4)) < reward  # novelty: -
    assert smm_reward(**{**base, "log_discriminator": base["log_discriminator"] + up}, log_prior=-math.log(4)) > reward
    assert smm_reward(**base, log_prior=-math.log(2)) < reward  # a likelier prior leaves less to discriminate
    scaled = smm_reward(**base, log_prior=-math.log(4), target_coef=2.0, density_coef=0.5, skill_coef=0.0)
    assert scaled.item() == pytest.approx(2.0 * -1.0 - 0.5 * 0.5)


def test_density_reward_prefers_rarely_visited_states():
    """After fitting on states mostly in one corner, the novelty term rewards the rare corner more."""
    th.manual_seed(0)
    rng = np.random.default_rng(0)
    common = rng.normal([0.2, 0.2], 0.05, size=(1900, 2))
    rare = rng.normal([0.8, 0.8], 0.05, size=(100, 2))
    states = np.clip(np.concatenate([common, rare]), 0, 1)
    smm = SMM(gym.spaces.Box(0.0, 1.0, shape=(3,), dtype=np.float32), n_skills=1, net_arch=(64, 64))
    data = augmented(states, np.zeros(len(states), dtype=int), 1)
    for _ in range(1500):
        smm.update(data[th.as_tensor(rng.integers(len(states), size=128))])
    rewards = smm.intrinsic_reward(data)
    assert rewards[1900:].mean() > rewards[:1900].mean() + 1.0


def test_discriminator_cross_entropy_starts_near_log_n_skills():
    th.manual_seed(1)
    smm = SMM(SPACE, n_skills=4)
    rng = np.random.default_rng(1)
    losses = smm.update(augmented(rng.uniform(size=(512, 2)), rng.integers(4, size=512), 4))
    assert losses["discriminator_loss"] == pytest.approx(math.log(4), abs=0.15)


def test_discriminator_term_rewards_distinguishable_skills():
    """Skills confined to separate regions become recognisable: log d(z|s) - log p(z) turns positive."""
    th.manual_seed(2)
    rng = np.random.default_rng(2)
    skills = rng.integers(2, size=1024)
    states = np.stack([0.25 + 0.5 * skills + rng.normal(0, 0.05, 1024), rng.uniform(size=1024)], axis=1)
    smm = SMM(gym.spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32), n_skills=2, density_coef=0.0)
    data = augmented(states, skills, 2)
    for _ in range(300):
        smm.update(data[th.as_tensor(rng.integers(1024, size=128))])
    assert smm.intrinsic_reward(data).mean() > 0.5 * math.log(2)


def test_skills_never_leak_across_episodes():
    """In auto-resetting vector envs a skill is constant within an episode, is redrawn per episode, and all are used."""
    venv = make_vec_env(lambda: SkillWrapper(PointRoomsEnv(max_episode_steps=5), n_skills=3), n_envs=2, seed=0)
    obs = venv.reset()
    current = obs[:, 2:].argmax(axis=1)
    episode_skills = []
    for _ in range(300):
        obs, _, dones, infos = venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
        for i in range(2):
            if dones[i]:
                # the episode's last observation carries the episode's skill, the reset one the next episode's
                assert infos[i]["terminal_observation"][2:].argmax() == current[i]
                episode_skills.append(current[i])
                current[i] = obs[i, 2:].argmax()
            else:
                assert obs[i, 2:].argmax() == current[i] == infos[i]["skill"]
            assert obs[i, 2:].sum() == 1.0
    counts = np.bincount(episode_skills, minlength=3)
    assert len(episode_skills) == 120 and counts.min() > 20


#: SMM's rewards are per transition: MPO trains on them with 1-step targets instead of its default Retrace segments
TRANSITION_TARGETS: dict[type, dict[str, str]] = {MPO: {"q_target": "n_step"}, SAC: {}, TD3: {}}


@pytest.mark.parametrize("algo", [MPO, SAC, TD3])
def test_smm_trains_with_off_policy_algorithms(algo):
    """MPO, SAC and TD3 learn from SMM rewards on PointRooms (whose own reward is always 0)."""
    env = SkillWrapper(gym.make("sb3_mpo/PointRooms-v0"), n_skills=2)
    kwargs = dict(learning_starts=100, batch_size=32, policy_kwargs=dict(net_arch=[16]), **TRANSITION_TARGETS[algo])
    smm_kwargs = dict(replay_buffer_class=SMMReplayBuffer, replay_buffer_kwargs=dict(n_skills=2))
    model = algo("MlpPolicy", env, seed=0, **smm_kwargs, **kwargs)
    snapshots = PolicySnapshots(snapshot_freq=100)
    model.learn(300, callback=snapshots)
    assert len(snapshots.snapshots) == 3
    assert "smm/density_loss" in model.logger.name_to_value
    batch = model.replay_buffer.sample(16)
    assert th.all(batch.rewards != 0)  # the environment gives 0: these are SMM's rewards
    # snapshots are frozen copies: the first one no longer equals the policy that kept training
    first, live = snapshots.snapshots[0].state_dict(), model.policy.state_dict()
    assert snapshots.snapshots[0] is not model.policy
    assert any(not th.equal(first[name], live[name]) for name in live)


@pytest.mark.parametrize("algo", [MPO, SAC])
def test_snapshots_survive_save_and_resume(algo, tmp_path):
    """Saved snapshots reload with the same actions, and a resumed run keeps adding to them on the same schedule."""
    env = SkillWrapper(gym.make("sb3_mpo/PointRooms-v0"), n_skills=2)
    kwargs = dict(learning_starts=50, batch_size=16, policy_kwargs=dict(net_arch=[16]), **TRANSITION_TARGETS[algo])
    model = algo(
        "MlpPolicy", env, seed=0, replay_buffer_class=SMMReplayBuffer, replay_buffer_kwargs=dict(n_skills=2), **kwargs
    )
    snapshots = PolicySnapshots(snapshot_freq=100)
    model.learn(250, callback=snapshots)
    snapshots.save(tmp_path / "snapshots")
    model.save(tmp_path / "model")

    loaded = PolicySnapshots.load(tmp_path / "snapshots")
    assert len(loaded.snapshots) == 2 and loaded.snapshot_freq == 100
    obs = np.stack([env.observation_space.sample() for _ in range(8)])
    for saved, reloaded in zip(snapshots.snapshots, loaded.snapshots, strict=True):
        assert type(reloaded) is type(saved) and not reloaded.training
        np.testing.assert_allclose(reloaded.predict(obs, deterministic=True)[0], saved.predict(obs, deterministic=True)[0])

    resumed = algo.load(tmp_path / "model", env=env)
    resumed.learn(200, callback=loaded, reset_num_timesteps=False)
    assert len(loaded.snapshots) == 4  # at steps 100, 200 (saved), then 300 and 400
    HistoricalAveragePolicy(loaded.snapshots, seed=0).predict(obs)
    with pytest.raises(FileNotFoundError, match=r"snapshots\.json"):
        PolicySnapshots.load(tmp_path)


def test_historical_average_picks_one_snapshot_per_episode():
    class Constant:
        observation_space = gym.spaces.Box(-1.0, 1.0, (3,))

        def __init__(self, value):
            self.value = value

        def predict(self, observation, deterministic=False):
            return np.full((len(observation), 1), self.value), None

    mixture = HistoricalAveragePolicy([Constant(0.0), Constant(1.0), Constant(2.0)], seed=0)
    obs = np.zeros((2, 3))
    seen, per_episode = set(), []
    for _ in range(30):
        actions = [mixture.predict(obs, episode_start=np.array([step == 0] * 2))[0] for step in range(4)]
        for env in range(2):
            values = {float(action[env, 0]) for action in actions}
            assert len(values) == 1  # one snapshot acts for the whole episode
            per_episode.append(values.pop())
    seen.update(per_episode)
    assert seen == {0.0, 1.0, 2.0}
    # one observation, as SB3's predict takes it: one action, the snapshot of its episode
    single = HistoricalAveragePolicy([Constant(0.0), Constant(1.0), Constant(2.0)], seed=0)
    first, _ = single.predict(np.zeros(3), episode_start=np.array([True]))
    assert first.shape == (1,) and all(single.predict(np.zeros(3))[0] == first for _ in range(3))


def test_bad_input_is_refused_before_training():
    env = SkillWrapper(gym.make("sb3_mpo/PointRooms-v0"), n_skills=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        MPO("MlpPolicy", env, q_target="n_step", replay_buffer_class=SMMReplayBuffer,
            replay_buffer_kwargs=dict(n_skills=2, target_log_prob=lambda s: np.full(len(s), np.nan)))  # fmt: skip
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        MPO("MlpPolicy", env, q_target="n_step", replay_buffer_class=SMMReplayBuffer,
            replay_buffer_kwargs=dict(n_skills=2, target_log_prob=lambda s: np.zeros((len(s), 2))))  # fmt: skip
    with pytest.raises(ValueError, match="n_skills must be an integer >= 1"):
        SkillWrapper(gym.make("sb3_mpo/PointRooms-v0"), n_skills=0)
    with pytest.raises(ValueError, match="1-D Box observation spaces only"):
        SkillWrapper(SimpleMultiObsEnv(), n_skills=2)
    with pytest.raises(ValueError, match="no room for 4 skill dimensions"):
        SMM(gym.spaces.Box(0.0, 1.0, shape=(4,)), n_skills=4)
    for name, value in (("density_coef", float("nan")), ("env_reward_coef", float("inf")), ("learning_rate", -1e-3)):
        with pytest.raises(ValueError, match=rf"SMM: {name}={value!r} is invalid"):
            SMM(SPACE, n_skills=4, **{name: value})
    with pytest.raises(ValueError, match=r"SMM: latent_dim=0 is invalid, expected an integer >= 1"):
        SMM(SPACE, n_skills=4, latent_dim=0)
    for name, value in (("max_step", float("nan")), ("max_step", -0.05), ("max_episode_steps", 0)):
        with pytest.raises(ValueError, match=rf"PointRoomsEnv: {name}={value!r} is invalid"):
            PointRoomsEnv(**{name: value})


def test_observations_without_a_one_hot_skill_are_refused_by_name():
    """
    An environment without SkillWrapper (MountainCarContinuous-v0's velocity ranges over ±0.07, not [0, 1]) is refused
    at once; a SkillWrapper of 4 skills read as 1 or 3 (its last features in [0, 1], not one-hot) at the first update.
    """
    with pytest.raises(ValueError, match=r"last n_skills=1 features .* not \[0, 1\].*SkillWrapper\(env, n_skills=1\)"):
        MPO("MlpPolicy", "MountainCarContinuous-v0", q_target="n_step", replay_buffer_class=SMMReplayBuffer)
    for n_skills in (1, 3):  # episodes of 10 steps: several skills in replay by the first update
        env = SkillWrapper(gym.make("sb3_mpo/PointRooms-v0", max_episode_steps=10), n_skills=4)
        model = MPO("MlpPolicy", env, q_target="n_step", replay_buffer_class=SMMReplayBuffer, learning_starts=50, seed=0,
                    batch_size=16, replay_buffer_kwargs=dict(n_skills=n_skills), policy_kwargs=dict(net_arch=[8]))  # fmt: skip
        with pytest.raises(ValueError, match=rf"last n_skills={n_skills} features of the observations are not a one-hot"):
            model.learn(100)


def test_smm_sees_the_environments_states_under_vec_normalize():
    """
    With VecNormalize the agent's batch is normalised, while SMM models the states and one-hot skills as the
    environment gives them: the batch's observations are the stored ones normalised, its rewards
    c_env · normalised r_env + r_z(stored s').
    """
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    env = VecNormalize(DummyVecEnv([lambda: SkillWrapper(gym.make("sb3_mpo/PointRooms-v0"), n_skills=2)]))
    model = MPO("MlpPolicy", env, q_target="n_step", replay_buffer_class=SMMReplayBuffer, learning_starts=1000,
                replay_buffer_kwargs=dict(n_skills=2, env_reward_coef=0.5), policy_kwargs=dict(net_arch=[8]))  # fmt: skip
    model.learn(200)  # before learning_starts: the buffer fills, nothing trains
    buffer = model.replay_buffer
    buffer.smm.update = lambda observations: {}  # the models held fixed, so that two samples compare
    batches = []
    for normaliser in (None, env):
        np.random.seed(0)  # the same rows
        batches.append(buffer.sample(32, env=normaliser))
    stored, normalised = batches
    assert set(stored.next_observations[:, 2:].flatten().tolist()) == {0.0, 1.0}
    for name in ("observations", "next_observations"):
        expected = env.normalize_obs(getattr(stored, name).numpy())
        np.testing.assert_allclose(getattr(normalised, name).numpy(), expected, rtol=1e-6)
    assert not np.isin(expected[:, 2:], [0.0, 1.0]).all()  # the normalised skills are no one-hot
    env_rewards = th.as_tensor(env.normalize_reward(np.zeros((32, 1), dtype=np.float32)))  # PointRooms pays 0
    th.testing.assert_close(normalised.rewards, buffer.smm.reward(stored.next_observations, env_rewards))


def test_target_density_enters_the_reward():
    """A user target log p*(s) is added to the reward (here: prefer the right half of the square)."""

    def right_half(states):
        return np.where(states[:, 0] > 0.5, 0.0, -5.0)

    smm = SMM(SPACE, n_skills=4, density_coef=0.0, skill_coef=0.0, target_log_prob=right_half)
    states = np.array([[0.9, 0.5], [0.1, 0.5]])
    th.testing.assert_close(smm.intrinsic_reward(augmented(states, np.array([0, 1]), 4)), th.tensor([0.0, -5.0]))


def test_walls_block_and_doors_let_through():
    env = PointRoomsEnv(max_step=0.1)
    blocked = env.move(np.array([0.45, 0.1]), np.array([1.0, 0.0]))
    assert blocked[0] < 0.5
    through = env.move(np.array([0.45, 0.25]), np.array([1.0, 0.0]))
    np.testing.assert_allclose(through, [0.55, 0.25])
    up_blocked = env.move(np.array([0.1, 0.45]), np.array([0.0, 1.0]))
    assert up_blocked[1] < 0.5
    up_through = env.move(np.array([0.75, 0.45]), np.array([0.0, 1.0]))
    assert up_through[1] > 0.5
    # a move that ends exactly on the wall's line enters the room beyond it (room_of's side), so it is stopped too
    onto_the_wall = env.move(np.array([0.45, 0.1]), np.array([0.5, 0.0]))
    assert onto_the_wall[0] < 0.5 and room_of(onto_the_wall[None])[0] == 0
    assert env.move(np.array([0.5, 0.1]), np.array([1.0, 0.0]))[0] == pytest.approx(0.6), "from the line, room 1 goes on"
    # random walks from the start never leave the square and never cross a wall outside a door
    rng = np.random.default_rng(0)
    position = env.start.copy()
    for _ in range(5000):
        new = env.move(position, rng.uniform(-1, 1, size=2))
        for axis, doors in ((0, (0.25, 0.75)), (1, (0.25, 0.75))):
            if (position[axis] - 0.5) * (new[axis] - 0.5) < 0:
                other = (position[1 - axis] + new[1 - axis]) / 2
                assert min(abs(other - door) for door in doors) <= 0.05 + 0.1
        assert np.all((0 <= new) & (new <= 1))
        position = new


def test_metrics_against_scipy():
    rng = np.random.default_rng(0)
    positions = rng.uniform(size=(5000, 2)) ** 2  # skewed toward the origin
    counts = metrics.visit_histogram(positions, bins=10)
    assert counts.sum() == 5000
    probabilities = counts.ravel() / 5000
    assert metrics.state_entropy(counts) == pytest.approx(stats.entropy(probabilities))
    assert metrics.kl_to_target(counts) == pytest.approx(stats.entropy(probabilities, np.full(100, 0.01)))
    assert metrics.kl_to_target(counts) == pytest.approx(math.log(100) - metrics.state_entropy(counts))
    assert metrics.coverage(counts) == pytest.approx(np.mean(counts > 0))
    fractions = metrics.room_fractions(positions)
    assert fractions.sum() == pytest.approx(1.0)
    assert fractions[0] == pytest.approx(np.mean((positions[:, 0] < 0.5) & (positions[:, 1] < 0.5)))
    one_cell = metrics.visit_histogram(np.full((10, 2), 0.15), bins=10)
    assert metrics.coverage(one_cell) == 0.01 and metrics.state_entropy(one_cell) == 0.0


def test_a_lambda_target_saves_and_loads_with_the_replay_buffer(tmp_path):
    """SB3 pickles the replay buffer with pickle, which refuses a lambda: SMM stores its target through cloudpickle."""
    env = SkillWrapper(gym.make("sb3_mpo/PointRooms-v0"), n_skills=2)
    kwargs = dict(
        q_target="n_step", replay_buffer_class=SMMReplayBuffer, learning_starts=1000, policy_kwargs=dict(net_arch=[8])
    )
    target = dict(n_skills=2, target_log_prob=lambda states: -10.0 * states[:, 0])
    model = MPO("MlpPolicy", env, replay_buffer_kwargs=target, **kwargs)
    model.learn(20)
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    resumed = MPO("MlpPolicy", env, replay_buffer_kwargs=dict(n_skills=2), **kwargs)
    resumed.load_replay_buffer(tmp_path / "buffer.pkl")
    states = th.tensor([[0.2, 0.5], [0.7, 0.1]])
    th.testing.assert_close(resumed.replay_buffer.smm.log_target(states), th.tensor([-2.0, -7.0]))
