import pickle
import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from sb3_mpo.common.buffers import DictSegmentReplayBuffer, SegmentReplayBuffer, SegmentSamples

# ---------------------------------------------------------------------------------------------------------------------
# Synthetic streams with a known ground truth: the observation of env e at its k-th step is (e, k, episode)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Transition:
    step: int
    episode: int
    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    cut: bool = False  # the stream was reset without an episode end, the buffer should notice it

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated or self.cut


class Streams:
    """``n_envs`` fake environments feeding a buffer step by step, keeping a log of what each of them produced."""

    def __init__(self, n_envs: int, seed: int, dict_obs: bool = False, end_prob: float = 0.07):
        self.n_envs = n_envs
        self.dict_obs = dict_obs
        self.end_prob = end_prob
        self.rng = np.random.default_rng(seed)
        self.steps = np.zeros(n_envs, dtype=np.int64)
        self.episodes = np.zeros(n_envs, dtype=np.int64)
        self.log: list[list[Transition]] = [[] for _ in range(n_envs)]

    @staticmethod
    def spaces(dict_obs: bool = False) -> tuple[spaces.Space, spaces.Box]:
        state = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        action = spaces.Box(-1.0, 1.0, (2,), np.float32)
        if dict_obs:
            image = spaces.Box(0, 255, (2, 2, 1), np.uint8)
            return spaces.Dict({"state": state, "image": image, "phase": spaces.Discrete(5)}), action
        return state, action

    def observations(self, steps: np.ndarray, episodes: np.ndarray) -> Any:
        envs = np.arange(self.n_envs)
        state = np.stack([envs, steps, episodes], axis=1).astype(np.float32)
        if not self.dict_obs:
            return state
        image = np.broadcast_to((steps % 256).astype(np.uint8)[:, None, None, None], (self.n_envs, 2, 2, 1)).copy()
        return {"state": state, "image": image, "phase": steps % 5}

    def step(self, buffer: SegmentReplayBuffer, stage: bool = True) -> None:
        obs = self.observations(self.steps, self.episodes)
        next_obs = self.observations(self.steps + 1, self.episodes)  # the terminal observation at an episode end
        actions = self.rng.uniform(-1, 1, size=(self.n_envs, 2)).astype(np.float32)
        terminated = self.rng.random(self.n_envs) < self.end_prob
        truncated = ~terminated & (self.rng.random(self.n_envs) < self.end_prob)
        rewards = (1000 * np.arange(self.n_envs) + self.steps).astype(np.float32)
        dones = terminated | truncated
        infos = [{"TimeLimit.truncated": bool(value)} for value in truncated]
        log_probs = behaviour_log_prob(actions)
        if stage:
            buffer.stage_behaviour_log_prob(log_probs)
            buffer.add(obs, next_obs, actions, rewards, dones, infos)
        else:
            buffer.add(obs, next_obs, actions, rewards, dones, infos, behaviour_log_prob=log_probs)
        for env in range(self.n_envs):
            self.log[env].append(
                Transition(
                    int(self.steps[env]), int(self.episodes[env]), actions[env], rewards[env], terminated[env], truncated[env]
                )
            )
        self.steps += 1
        self.episodes[dones] += 1

    def reset_without_done(self, env: int) -> None:
        """The environment restarts mid-episode (as when ``learn()`` resets the VecEnv)."""
        self.episodes[env] += 1
        self.log[env][-1].cut = True


def behaviour_log_prob(actions: np.ndarray) -> np.ndarray:
    """A stand-in log-probability that identifies its action, to check they stay aligned."""
    return -np.abs(np.asarray(actions, dtype=np.float32)).reshape(len(actions), -1).sum(axis=1)


def state_of(obs: Any) -> np.ndarray:
    return (obs["state"] if isinstance(obs, dict) else obs).numpy()


def all_segments(buffer: SegmentReplayBuffer) -> tuple[SegmentSamples, np.ndarray, np.ndarray]:
    """Every (start, env) pair the buffer can sample, in one batch."""
    n_stored = buffer.size() - (1 if buffer.optimize_memory_usage and buffer.full else 0)
    starts, envs = np.meshgrid(np.arange(n_stored), np.arange(buffer.n_envs), indexing="ij")
    starts, envs = starts.ravel(), envs.ravel()
    return buffer.get_segments(starts, envs), starts, envs


def check_against_log(buffer: SegmentReplayBuffer, streams: Streams, samples: SegmentSamples) -> None:
    """Every valid step of every segment is the transition the log says, and validity stops exactly where it must."""
    batch, length = samples.rewards.shape
    obs, next_obs = state_of(samples.observations), state_of(samples.next_observations)
    assert obs.shape == (batch, length, 3) and samples.actions.shape == (batch, length, 2)
    for name in ("rewards", "terminations", "episode_ends", "valid", "behaviour_log_probs"):
        assert getattr(samples, name).shape == (batch, length), name
    assert (samples.valid[:, 0] == 1).all()
    strict_timeouts = buffer.handle_timeout_termination
    for i in range(batch):
        env, first = int(obs[i, 0, 0]), int(obs[i, 0, 1])
        log = streams.log[env]
        ended = False
        for t in range(length):
            step = first + t
            expected_valid = step < len(log) and not ended
            assert samples.valid[i, t] == float(expected_valid), (i, t)
            if not expected_valid:
                break
            entry = log[step]
            np.testing.assert_array_equal(obs[i, t], [env, step, entry.episode])
            np.testing.assert_array_equal(samples.actions[i, t].numpy(), entry.action)
            assert samples.behaviour_log_probs[i, t] == pytest.approx(behaviour_log_prob(entry.action[None])[0])
            assert samples.rewards[i, t] == entry.reward
            assert samples.episode_ends[i, t] == float(entry.done)
            if buffer.optimize_memory_usage:
                expected_termination = entry.done
            else:
                # a cut is a truncation where the buffer tells truncations apart, else a termination like every end
                expected_termination = entry.terminated or ((entry.truncated or entry.cut) and not strict_timeouts)
            assert samples.terminations[i, t] == float(expected_termination), (i, t)
            if buffer.optimize_memory_usage and entry.done and step < len(log) - 1:
                pass  # SB3's caveat: the terminal observation was overwritten by the next episode's first one
            else:
                np.testing.assert_array_equal(next_obs[i, t], [env, step + 1, entry.episode])
            ended = entry.done
        if isinstance(samples.observations, dict):
            steps = obs[i, :, 1].astype(np.int64)
            np.testing.assert_array_equal(samples.observations["phase"][i].numpy().ravel(), steps % 5)
            np.testing.assert_array_equal(samples.observations["image"][i, :, 0, 0, 0].numpy(), steps % 256)


def check_coverage(buffer: SegmentReplayBuffer, streams: Streams, samples: SegmentSamples, envs: np.ndarray) -> None:
    """The segments start at exactly the transitions still stored: the newest ``capacity`` ones of each env."""
    n_stored = buffer.size() - (1 if buffer.optimize_memory_usage and buffer.full else 0)
    obs = state_of(samples.observations)
    for env in range(streams.n_envs):
        first_steps = sorted(obs[envs == env, 0, 1].astype(int))
        n_logged = len(streams.log[env])
        kept = n_stored
        assert first_steps == list(range(n_logged - kept, n_logged))
        np.testing.assert_array_equal(obs[envs == env, 0, 0], env)


def make_buffer(
    size: int, n_envs: int, optimize: bool = False, timeouts: bool = True, dict_obs: bool = False, length: int = 5
) -> SegmentReplayBuffer:
    observation_space, action_space = Streams.spaces(dict_obs)
    return SegmentReplayBuffer(
        size,
        observation_space,
        action_space,
        device="cpu",
        n_envs=n_envs,
        optimize_memory_usage=optimize,
        handle_timeout_termination=timeouts,
        segment_length=length,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_steps", [4, 7, 12, 41])
@pytest.mark.parametrize(
    "n_envs, optimize, timeouts", [(1, False, True), (2, False, True), (2, False, False), (1, True, False), (2, True, False)]
)
def test_segments_follow_the_streams(n_steps: int, n_envs: int, optimize: bool, timeouts: bool) -> None:
    # 12 rows per env, segments of 5: filled part-way, exactly full, and wrapped around more than three times
    buffer = make_buffer(12 * n_envs, n_envs, optimize=optimize, timeouts=timeouts)
    streams = Streams(n_envs, seed=n_steps + 10 * n_envs)
    for step in range(n_steps):
        streams.step(buffer, stage=step % 2 == 0)
    samples, _, envs = all_segments(buffer)
    check_against_log(buffer, streams, samples)
    check_coverage(buffer, streams, samples, envs)
    # the data exercise every case
    valid = samples.valid.bool()
    if n_steps > 12:
        assert (~valid[:, 1:]).any() and valid.all(dim=1).any()
        assert (samples.episode_ends.bool() & valid).any()
        if not optimize and timeouts:
            assert (samples.episode_ends.bool() & ~samples.terminations.bool() & valid).any()


def test_random_sampling_uses_every_start_and_env() -> None:
    buffer = make_buffer(20, n_envs=2, length=4)
    streams = Streams(2, seed=3)
    for _ in range(25):
        streams.step(buffer)
    np.random.seed(0)
    samples = buffer.sample(512)
    check_against_log(buffer, streams, samples)
    obs = state_of(samples.observations)
    assert set(obs[:, 0, 0].astype(int)) == {0, 1}
    assert set(obs[:, 0, 1].astype(int)) == set(range(15, 25))
    assert samples.rewards.dtype == th.float32 and samples.valid.dtype == th.float32


def test_dict_observations() -> None:
    buffer = make_buffer(16, n_envs=2, dict_obs=True)
    assert isinstance(buffer, DictSegmentReplayBuffer) and isinstance(buffer, SegmentReplayBuffer)
    streams = Streams(2, seed=4, dict_obs=True)
    for _ in range(19):
        streams.step(buffer)
    samples, _, envs = all_segments(buffer)
    assert isinstance(samples.observations, dict) and isinstance(samples.next_observations, dict)
    assert samples.observations["image"].shape == (len(envs), 5, 2, 2, 1)
    assert samples.observations["image"].dtype == th.uint8
    check_against_log(buffer, streams, samples)
    check_coverage(buffer, streams, samples, envs)
    with pytest.raises(ValueError, match="Dict"):
        make_buffer(16, n_envs=2, dict_obs=True, optimize=True, timeouts=False)


def test_a_subclass_for_array_observations_refuses_a_dict_space_by_name() -> None:
    """SegmentReplayBuffer itself becomes the Dict buffer; a user's subclass of it cannot, and says which to subclass."""

    class ArrayBuffer(SegmentReplayBuffer):
        pass

    class DictBuffer(DictSegmentReplayBuffer):
        pass

    observation_space, action_space = Streams.spaces(dict_obs=True)
    with pytest.raises(ValueError, match=r"^ArrayBuffer stores observations as one array.*subclass of DictSegmentReplay"):
        ArrayBuffer(16, observation_space, action_space, device="cpu")
    assert type(DictBuffer(16, observation_space, action_space, device="cpu")) is DictBuffer
    assert type(ArrayBuffer(16, *Streams.spaces(dict_obs=False), device="cpu")) is ArrayBuffer


def test_a_cut_leaves_no_timeout_that_outlives_its_row_without_timeout_handling() -> None:
    """
    With handle_timeout_termination=False SB3's add never writes ``timeouts``: a cut written there as a truncation
    would turn the termination stored in its row after the wrap-around into a truncation. Streams logged over several
    wrap-arounds with cuts and terminations: every sampled termination is the log's.
    """
    for seed in range(20):
        buffer = make_buffer(8, n_envs=2, timeouts=False, length=3)
        streams = Streams(2, seed=seed, end_prob=0.3)
        rng = np.random.default_rng(seed)
        for step in range(40):
            if step and rng.random() < 0.15:
                streams.reset_without_done(int(rng.integers(2)))
            streams.step(buffer)
        assert buffer.timeouts.sum() == 0
        check_against_log(buffer, streams, all_segments(buffer)[0])


@pytest.mark.parametrize("optimize, timeouts", [(False, True), (False, False), (True, False)])
def test_reset_without_episode_end_cuts_the_stream(optimize: bool, timeouts: bool) -> None:
    buffer = make_buffer(30, n_envs=2, optimize=optimize, timeouts=timeouts)
    streams = Streams(2, seed=5, end_prob=0.0)
    for _ in range(6):
        streams.step(buffer)
    streams.reset_without_done(env=1)
    for _ in range(5):
        streams.step(buffer)
    samples, _, _ = all_segments(buffer)
    check_against_log(buffer, streams, samples)
    newest_row = (buffer.pos - 1) % buffer.buffer_size
    cut_row = (newest_row - 5) % buffer.buffer_size
    assert buffer.dones[cut_row].tolist() == [0.0, 1.0]
    # a cut keeps the bootstrap where the buffer tells truncations apart; else (optimize_memory_usage, whose next
    # observation is gone, as SB3 does) it is a termination
    assert buffer.timeouts[cut_row, 1] == (1.0 if timeouts else 0.0)

    buffer.truncate_last_trajectory()
    assert buffer.dones[newest_row].tolist() == [1.0, 1.0]
    for env in range(2):
        streams.log[env][-1].cut = True
    check_against_log(buffer, streams, all_segments(buffer)[0])


def test_behaviour_log_prob_is_required_and_consumed() -> None:
    buffer = make_buffer(10, n_envs=2)
    streams = Streams(2, seed=6)
    obs = streams.observations(streams.steps, streams.episodes)
    args = (obs, obs, np.zeros((2, 2), np.float32), np.zeros(2, np.float32), np.zeros(2, bool), [{}, {}])
    with pytest.raises(ValueError, match="stage_behaviour_log_prob"):
        buffer.add(*args)
    buffer.stage_behaviour_log_prob(th.tensor([-1.0, -2.0]))
    buffer.add(*args)
    np.testing.assert_array_equal(buffer.behaviour_log_probs[0], [-1.0, -2.0])
    with pytest.raises(ValueError, match="stage_behaviour_log_prob"):
        buffer.add(*args)  # the staged value was used up
    with pytest.raises(ValueError, match="one behaviour log-probability per environment"):
        buffer.stage_behaviour_log_prob(np.zeros(3))


def test_invalid_arguments() -> None:
    for length in (0, 2.5, np.float64(3.0), True):
        with pytest.raises(ValueError, match=rf"segment_length={re.escape(repr(length))} is invalid, expected a positive"):
            make_buffer(10, n_envs=1, length=length)  # type: ignore[arg-type]
    assert make_buffer(10, n_envs=1, length=np.int64(3)).segment_length == 3
    with pytest.raises(ValueError, match="optimize_memory_usage"):
        make_buffer(10, n_envs=1, optimize=True, timeouts=True)  # SB3's restriction, same reason
    with pytest.raises(ValueError, match="no complete transition"):
        make_buffer(10, n_envs=1).sample(4)


def test_pickle_round_trip() -> None:
    for dict_obs in (False, True):
        buffer = make_buffer(12, n_envs=2, dict_obs=dict_obs)
        streams = Streams(2, seed=7, dict_obs=dict_obs)
        for _ in range(15):
            streams.step(buffer)
        loaded = pickle.loads(pickle.dumps(buffer))
        assert type(loaded) is type(buffer)
        assert (loaded.pos, loaded.full, loaded.segment_length) == (buffer.pos, buffer.full, buffer.segment_length)
        np.random.seed(1)
        original = buffer.sample(32)
        np.random.seed(1)
        check_against_log(loaded, streams, loaded.sample(32))
        np.random.seed(1)
        for before, after in zip(original, loaded.sample(32), strict=True):
            if isinstance(before, dict):
                for key in before:
                    assert th.equal(before[key], after[key])
            else:
                assert th.equal(before, after)
        streams.step(loaded)  # the loaded buffer keeps going
        check_against_log(loaded, streams, all_segments(loaded)[0])


# ---------------------------------------------------------------------------------------------------------------------
# Through SB3's own collection loop (_store_transition), with real VecEnvs
# ---------------------------------------------------------------------------------------------------------------------

MAX_EPISODE_STEPS = 7


class CounterEnv(gym.Env):
    """Observation: (env index, step in the episode, episode count, 1 if this step terminated)."""

    def __init__(self, env_index: int = 0):
        super().__init__()
        self.env_index = env_index
        self.observation_space = spaces.Box(0.0, 1e6, (4,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.episode = 0
        self.t = 0

    def _obs(self, terminated: bool = False) -> np.ndarray:
        return np.array([self.env_index, self.t, self.episode, float(terminated)], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        terminated = bool(self.np_random.random() < 0.1)
        return self._obs(terminated), float(self.t), terminated, False, {}


def make_counter_env(env_index: int) -> gym.Env:
    return gym.wrappers.TimeLimit(CounterEnv(env_index), max_episode_steps=MAX_EPISODE_STEPS)


class StagingSAC(SAC):
    """SAC whose collection loop hands the buffer a behaviour log-probability, as MPO's does."""

    def _sample_action(self, learning_starts: int, action_noise: Any = None, n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        action, buffer_action = super()._sample_action(learning_starts, action_noise, n_envs)
        assert isinstance(self.replay_buffer, SegmentReplayBuffer)
        self.replay_buffer.stage_behaviour_log_prob(behaviour_log_prob(buffer_action))
        return action, buffer_action


def make_model(env: Any, buffer_size: int) -> StagingSAC:
    return StagingSAC(
        "MlpPolicy",
        env,
        buffer_size=buffer_size,
        learning_starts=10**9,  # collect only
        replay_buffer_class=SegmentReplayBuffer,
        replay_buffer_kwargs={"segment_length": 6},
        policy_kwargs={"net_arch": [8]},
        device="cpu",
        seed=0,
    )


def check_counter_segments(buffer: SegmentReplayBuffer) -> None:
    """Segments of CounterEnv data: one env each, consecutive steps of one episode, ends exactly at discontinuities."""
    samples, starts, envs = all_segments(buffer)
    obs, next_obs = samples.observations.numpy(), samples.next_observations.numpy()
    valid, ends = samples.valid.numpy().astype(bool), samples.episode_ends.numpy().astype(bool)
    terminations = samples.terminations.numpy().astype(bool)
    length = obs.shape[1]
    assert valid[:, 0].all()
    for i in range(len(starts)):
        n_valid = int(valid[i].sum())
        assert valid[i, :n_valid].all() and not valid[i, n_valid:].any()
        seg, seg_next = obs[i, :n_valid], next_obs[i, :n_valid]
        np.testing.assert_array_equal(seg[:, 0], envs[i])  # never another env's stream
        np.testing.assert_array_equal(seg_next[:, 0], envs[i])
        np.testing.assert_array_equal(seg[:, 2], seg[0, 2])  # one episode
        np.testing.assert_array_equal(seg[:, 1], seg[0, 1] + np.arange(n_valid))
        np.testing.assert_array_equal(seg_next[:, 1], seg[:, 1] + 1)
        np.testing.assert_array_equal(seg_next[:-1], seg[1:])
        np.testing.assert_array_equal(terminations[i, :n_valid], seg_next[:, 3] == 1)  # truncations are not terminations
        np.testing.assert_allclose(
            samples.behaviour_log_probs[i].numpy(), behaviour_log_prob(samples.actions[i].numpy()), rtol=1e-6
        )
        for t in range(length - 1):
            if starts[i] + t + 1 < buffer.size():  # the following row is stored: an end is exactly a discontinuity
                assert ends[i, t] == (not np.array_equal(next_obs[i, t], obs[i, t + 1])), (i, t)
        # the segment ends early only at an episode end or at the newest transition
        if n_valid < length:
            assert ends[i, n_valid - 1] or starts[i] + n_valid == buffer.size()


def test_subproc_vec_env_streams_stay_separate() -> None:
    env = SubprocVecEnv([partial(make_counter_env, index) for index in range(4)], start_method="fork")
    try:
        model = make_model(env, buffer_size=4 * 40)
        model.learn(total_timesteps=4 * 55)  # wraps around
        buffer = model.replay_buffer
        assert isinstance(buffer, SegmentReplayBuffer) and buffer.full and buffer.n_envs == 4
        check_counter_segments(buffer)
        ends = buffer.dones.astype(bool)
        assert (ends & (buffer.timeouts == 1)).any() and (ends & (buffer.timeouts == 0)).any()
        # learn() again resets the envs mid-episode: the buffer cuts the streams there
        model.learn(total_timesteps=4 * 10, reset_num_timesteps=True)
        check_counter_segments(buffer)
    finally:
        env.close()


def test_save_and_load_replay_buffer(tmp_path: Any) -> None:
    model = make_model(DummyVecEnv([partial(make_counter_env, index) for index in range(2)]), buffer_size=2 * 30)
    model.learn(total_timesteps=2 * 35)
    path = tmp_path / "segments.pkl"
    model.save_replay_buffer(path)

    other = make_model(DummyVecEnv([partial(make_counter_env, index) for index in range(2)]), buffer_size=10)
    other.load_replay_buffer(path)
    loaded = other.replay_buffer
    assert isinstance(loaded, SegmentReplayBuffer) and isinstance(loaded, ReplayBuffer)
    original = model.replay_buffer
    assert isinstance(original, SegmentReplayBuffer)
    assert (loaded.pos, loaded.full, loaded.buffer_size) == (original.pos, original.full, original.buffer_size)
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts", "behaviour_log_probs"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(original, name))
    # a fresh env continues the loaded data: the old streams are cut, nothing is joined across
    other.learn(total_timesteps=2 * 12)
    check_counter_segments(loaded)


def test_vec_normalize_at_sampling() -> None:
    venv = VecNormalize(DummyVecEnv([partial(make_counter_env, 0)]), gamma=0.9)
    model = make_model(venv, buffer_size=50)
    model.learn(total_timesteps=30)
    buffer = model.replay_buffer
    assert isinstance(buffer, SegmentReplayBuffer)
    starts, envs = np.arange(10), np.zeros(10, dtype=np.int64)
    raw = buffer.get_segments(starts, envs)
    normalized = buffer.get_segments(starts, envs, env=venv)
    np.testing.assert_allclose(normalized.observations.numpy(), venv.normalize_obs(raw.observations.numpy()), rtol=1e-6)
    np.testing.assert_allclose(normalized.rewards.numpy(), venv.normalize_reward(raw.rewards.numpy()), rtol=1e-6)
    assert not np.allclose(normalized.observations.numpy(), raw.observations.numpy())
    # the stored observations are the original ones
    assert set(np.unique(raw.observations.numpy()[..., 1])) <= set(range(MAX_EPISODE_STEPS + 1))
