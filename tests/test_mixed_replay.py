"""Mixed online and replay batches (Acme's ``replay_fraction``): a share of each batch is the newest data."""

import itertools

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer

from sb3_mpo import MPO
from sb3_mpo.common.buffers import SegmentReplayBuffer, mixed_batch_sizes, newest_windows, sample_mixed, stored_range
from sb3_mpo.exploration import SkillWrapper, SMMReplayBuffer

OBS_SPACE = spaces.Box(-np.inf, np.inf, (1,), np.float32)
ACTION_SPACE = spaces.Box(-1.0, 1.0, (1,), np.float32)


def fill(buffer: ReplayBuffer, steps: int, episode_ends: tuple[int, ...] = ()) -> None:
    """Store ``steps`` steps whose observation is the step's number (plus 1000 x the env's index)."""
    offsets = 1000.0 * np.arange(buffer.n_envs, dtype=np.float32)[:, None]
    for step in range(steps):
        done = np.full(buffer.n_envs, step in episode_ends)
        obs = step + offsets
        if isinstance(buffer, SegmentReplayBuffer):
            buffer.stage_behaviour_log_prob(np.zeros(buffer.n_envs, dtype=np.float32))
        infos = [{} for _ in range(buffer.n_envs)]
        buffer.add(obs, obs + 1, np.zeros((buffer.n_envs, 1)), np.full(buffer.n_envs, float(step)), done, infos)


@pytest.mark.parametrize("count, n_stored, n_envs, span", itertools.product([1, 3, 7], [1, 5, 12], [1, 2, 3], [1, 4]))
def test_newest_windows_are_the_newest_complete_windows(count, n_stored, n_envs, span):
    """Against brute force: every window of every env that ends by the newest step, newest first, envs in turn."""
    windows = [(start, env) for start in range(n_stored - span, -1, -1) for env in range(n_envs)]
    starts, envs = newest_windows(count, n_stored, n_envs, span)
    expected = windows[:count]
    assert [(int(s), int(e)) for s, e in zip(starts, envs, strict=True)][: len(expected)] == expected
    # Fewer complete windows than asked for (early in training): the oldest start repeats, envs still in turn
    assert np.all(starts[len(expected) :] == 0) and np.array_equal(envs, np.arange(count) % n_envs)


@pytest.mark.parametrize(
    "batch_size, fraction, expected", [(8, 1.0, (8, 0)), (8, 0.5, (4, 4)), (8, 0.25, (2, 6)), (3, 0.5, (2, 1))]
)
def test_batch_split(batch_size, fraction, expected):
    assert mixed_batch_sizes(batch_size, fraction) == expected


def test_full_replay_fraction_samples_uniform_segments():
    """With 1.0 the batch is today's: starts then envs drawn uniformly, in that order, from NumPy's global generator."""
    buffer = SegmentReplayBuffer(100, OBS_SPACE, ACTION_SPACE, n_envs=2, segment_length=4)
    fill(buffer, 40, episode_ends=(9, 25))
    np.random.seed(3)
    drawn = buffer.sample(16, replay_fraction=1.0)
    np.random.seed(3)
    starts, envs = np.random.randint(0, 40, size=16), np.random.randint(0, 2, size=16)
    expected = buffer.get_segments(starts, envs)
    for got, want in zip(drawn, expected, strict=True):
        assert th.equal(got, want)


def test_mixed_segments_end_with_the_newest_and_respect_episode_ends():
    buffer = SegmentReplayBuffer(100, OBS_SPACE, ACTION_SPACE, n_envs=2, segment_length=4)
    fill(buffer, 30, episode_ends=(27,))  # an episode ends inside the newest windows
    batch = sample_mixed(buffer, 8, replay_fraction=0.5)
    first_obs = batch.observations[4:, 0, 0].numpy()
    # The four newest windows of 4 steps in 2 envs start at steps 26, 26, 25, 25 (env 0, env 1, env 0, env 1)
    assert np.array_equal(first_obs, [26.0, 1026.0, 25.0, 1025.0])
    # Each is cut after the episode's end at step 27: steps 26-27 (2 valid) and 25-27 (3 valid)
    assert batch.valid[4:].sum(dim=1).tolist() == [2.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize("n_steps, newest_first_obs", [(1, [29.0, 28.0]), (3, [27.0, 26.0])])
def test_mixed_transitions_are_the_newest_whose_returns_are_complete(n_steps, newest_first_obs):
    """SB3's buffers: the newest transitions (n-step: the newest whose n steps are stored), after the uniform share."""
    kwargs = dict(n_steps=n_steps, gamma=0.9) if n_steps > 1 else {}
    buffer_class = NStepReplayBuffer if n_steps > 1 else ReplayBuffer
    buffer = buffer_class(100, OBS_SPACE, ACTION_SPACE, n_envs=1, **kwargs)
    fill(buffer, 30)
    batch = sample_mixed(buffer, 8, replay_fraction=0.75)
    assert batch.observations.shape == (8, 1)
    assert batch.observations[6:, 0].tolist() == newest_first_obs
    if n_steps > 1:  # the n-step return of step 27 sums rewards 27, 28, 29
        assert batch.rewards[6, 0].item() == pytest.approx(27 + 0.9 * 28 + 0.81 * 29)


def test_newest_windows_follow_the_write_head_around_a_full_buffer():
    buffer = SegmentReplayBuffer(10, OBS_SPACE, ACTION_SPACE, n_envs=1, segment_length=3)
    fill(buffer, 25)
    oldest, n_stored = stored_range(buffer)
    assert n_stored == 10 and buffer.observations[oldest, 0, 0] == 15.0
    batch = sample_mixed(buffer, 2, replay_fraction=0.5)
    assert batch.observations[1, :, 0].tolist() == [22.0, 23.0, 24.0]


def test_mpo_trains_with_mixed_batches_and_keeps_the_fraction(tmp_path):
    model = MPO("MlpPolicy", "Pendulum-v1", replay_fraction=0.5, learning_starts=64, batch_size=64, seed=0)
    model.learn(160)
    assert model._n_updates > 0
    model.save(tmp_path / "model")
    assert MPO.load(tmp_path / "model").replay_fraction == 0.5


def test_mixed_batches_refused_with_a_buffer_that_samples_its_own_way():
    """SMM's buffer updates its models on every sample(): the newest data would bypass that, so it is refused."""
    env = SkillWrapper(gym.make("Pendulum-v1"), n_skills=1)
    with pytest.raises(ValueError, match=r"replay_fraction=0\.5 is invalid with replay_buffer_class=SMMReplayBuffer"):
        MPO("MlpPolicy", env, q_target="n_step", replay_fraction=0.5, replay_buffer_class=SMMReplayBuffer)
