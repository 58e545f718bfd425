"""Trajectory-segment replay for critics that learn from several consecutive steps (Retrace, n-step returns)."""

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import PyTorchObs, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from sb3_mpo.common.checks import is_integer

NumpyObs = np.ndarray | dict[str, np.ndarray]


def map_observations(function: Callable[[Any], Any], observations: Any) -> Any:
    """
    :param function: What to do to one array or tensor of observations
    :param observations: A batch of observations, or a dict of them (``Dict`` observation spaces)
    :return: ``function`` applied to the batch, or to each batch of the dict
    """
    if isinstance(observations, dict):
        return {key: function(value) for key, value in observations.items()}
    return function(observations)


class SegmentSamples(NamedTuple):
    """
    A batch of B trajectory segments of length L, each an index window over one environment's stream.

    Step ``t`` of segment ``i`` is the transition (s_t, a_t, r_t, s_{t+1}). Steps whose ``valid`` is 0 are not part of
    the segment (they follow the end of its episode, or lie past the newest stored transition): their entries are
    finite but unrelated data and must be masked out. Step 0 is always valid.

    :param observations: s_t, shape (B, L, *obs_shape), or a dict of such tensors for Dict observation spaces
    :param actions: a_t as stored (for MPO: the Gaussian-space action), shape (B, L, action_dim)
    :param next_observations: s_{t+1} (the true terminal observation at an episode's last step), like ``observations``
    :param rewards: r_t, shape (B, L), normalised when a ``VecNormalize`` is passed to ``sample``
    :param terminations: 1.0 where the episode truly terminated at step t (the bootstrap from s_{t+1} is dropped);
        time-limit truncations are not terminations when ``handle_timeout_termination`` is on; shape (B, L)
    :param episode_ends: 1.0 where the episode ended at step t, by termination or truncation (a trace must be cut
        after it, but a truncated step keeps its bootstrap); shape (B, L)
    :param valid: 1.0 for the steps that belong to the segment: a prefix of each row; shape (B, L)
    :param behaviour_log_probs: log b(a_t | s_t) of the policy that chose a_t, recorded at collection time; shape (B, L)
    """

    observations: PyTorchObs
    actions: th.Tensor
    next_observations: PyTorchObs
    rewards: th.Tensor
    terminations: th.Tensor
    episode_ends: th.Tensor
    valid: th.Tensor
    behaviour_log_probs: th.Tensor


class SegmentReplayBuffer(ReplayBuffer):
    """
    Replay buffer that samples contiguous trajectory segments, for multi-step critic targets such as Retrace
    (Munos et al. 2016) as used by MPO (Abdolmaleki et al. 2018, Sec. 4).

    Storage is SB3's ``ReplayBuffer`` (or ``DictReplayBuffer``) layout unchanged, arrays of shape
    (buffer_size // n_envs, n_envs, ...) written once per step: each column is one environment's stream in time order,
    and a segment is a window of ``segment_length`` consecutive rows of one column, so nothing is stored twice and
    segments never mix environments. One float32 per transition is added: the behaviour policy's log-probability
    of the stored action, which SB3's ``_store_transition`` does not pass, so the algorithm hands it over with
    :meth:`stage_behaviour_log_prob` just before each ``add`` (or with ``add(..., behaviour_log_prob=...)``).

    A segment is cut (``valid`` = 0 afterwards) at the end of an episode and at the newest stored transition, so it
    never crosses an episode boundary nor the wrap-around point between the newest and the oldest data.
    Where the stream of one environment is discontinuous although no episode ended (e.g. ``learn()`` reset the
    environments, or a loaded buffer is continued by a fresh environment), ``add`` notices that the new observation
    differs from the stored next observation of the previous step and marks that step as a time-limit truncation
    (its bootstrap is kept); :meth:`truncate_last_trajectory` does the same explicitly.

    Constructing it with a Dict observation space returns a :class:`DictSegmentReplayBuffer`.

    ``optimize_memory_usage`` works as in SB3's ``ReplayBuffer``, with the same caveats: the next observation of a
    step is the observation of the following row, so the terminal observation of an episode is overwritten by the
    first observation of the next one. Hence it requires ``handle_timeout_termination=False`` (every episode end is
    then a termination) and, like ``DictReplayBuffer``, it is not available for Dict observations. The row that holds
    only the newest next observation is never sampled.

    :param buffer_size: Max number of transitions in the buffer (split evenly between the environments)
    :param observation_space: Observation space
    :param action_space: Action space
    :param device: PyTorch device
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Store each observation once (next observation = observation of the following row),
        see above
    :param handle_timeout_termination: Treat time-limit truncations (``info["TimeLimit.truncated"]``) as episode ends
        that keep their bootstrap rather than as terminations
    :param segment_length: Number L of consecutive steps in each sampled segment
    """

    behaviour_log_probs: np.ndarray

    def __new__(cls, *args: Any, **kwargs: Any) -> "SegmentReplayBuffer":
        observation_space = args[1] if len(args) > 1 else kwargs.get("observation_space")
        if isinstance(observation_space, spaces.Dict) and not issubclass(cls, DictSegmentReplayBuffer):
            if cls is not SegmentReplayBuffer:
                raise ValueError(
                    f"{cls.__name__} stores observations as one array, which a Dict observation space does not fit: "
                    "expected a subclass of DictSegmentReplayBuffer for Dict observations"
                )
            cls = DictSegmentReplayBuffer
        return super().__new__(cls)

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        segment_length: int = 8,
    ):
        if not (is_integer(segment_length) and segment_length >= 1):
            raise ValueError(f"SegmentReplayBuffer: segment_length={segment_length!r} is invalid, expected a positive integer")
        if optimize_memory_usage and isinstance(observation_space, spaces.Dict):
            raise ValueError("SegmentReplayBuffer does not support optimize_memory_usage=True with Dict observations")
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=optimize_memory_usage,
            handle_timeout_termination=handle_timeout_termination,
        )
        self.segment_length = segment_length
        self.behaviour_log_probs = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self._staged_log_prob: np.ndarray | None = None

    def stage_behaviour_log_prob(self, log_prob: np.ndarray | th.Tensor) -> None:
        """
        Record log b(a|s) of the actions about to be stored; the next call to ``add`` consumes it.
        The log-probability must be that of the action exactly as stored (for MPO the Gaussian-space action ``u``),
        in the same space as the target policy's log-probability that the importance ratio will divide by it.

        :param log_prob: One log-probability per environment, shape (n_envs,)
        """
        if isinstance(log_prob, th.Tensor):
            log_prob = log_prob.detach().cpu().numpy()
        self._staged_log_prob = self._as_log_prob(log_prob)

    def _as_log_prob(self, log_prob: np.ndarray) -> np.ndarray:
        array = np.asarray(log_prob, dtype=np.float32)
        if array.size != self.n_envs:
            raise ValueError(
                f"SegmentReplayBuffer: expected one behaviour log-probability per environment ({self.n_envs}), "
                f"got an array of shape {array.shape}"
            )
        return array.reshape(self.n_envs).copy()

    def add(
        self,
        obs: NumpyObs,
        next_obs: NumpyObs,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
        behaviour_log_prob: np.ndarray | None = None,
    ) -> None:
        """
        Store one step of every environment, with the behaviour log-probability given here or staged before.

        :param obs: Observations s_t, one per environment
        :param next_obs: Next observations s_{t+1} (the terminal observation where the episode ended)
        :param action: Actions a_t as they should be replayed
        :param reward: Rewards r_t
        :param done: Episode ends (termination or truncation), as returned by the VecEnv
        :param infos: The VecEnv's infos, read for ``TimeLimit.truncated``
        :param behaviour_log_prob: log b(a_t|s_t), shape (n_envs,); defaults to the value staged with
            :meth:`stage_behaviour_log_prob`
        """
        if behaviour_log_prob is not None:
            log_prob = self._as_log_prob(behaviour_log_prob)
        elif self._staged_log_prob is not None:
            log_prob = self._staged_log_prob
        else:
            raise ValueError(
                "SegmentReplayBuffer.add needs the behaviour policy's log-probability of each action: call "
                "stage_behaviour_log_prob(log_prob) before add (SB3's _store_transition does not pass it) "
                "or pass add(..., behaviour_log_prob=log_prob)"
            )
        self._staged_log_prob = None
        self._cut_where_discontinuous(obs)
        self.behaviour_log_probs[self.pos] = log_prob
        super().add(obs, next_obs, action, reward, done, infos)  # type: ignore[arg-type]

    def truncate_last_trajectory(self) -> None:
        """
        End the newest episode of every environment at the newest stored step, as a time-limit truncation (or as a
        termination with ``optimize_memory_usage``, whose next observation is about to be overwritten). Call it when
        the environments are reset outside of an episode end, so that no segment joins the two streams.
        """
        end_newest_episodes(self)

    def _cut_where_discontinuous(self, obs: NumpyObs) -> None:
        """Cut the stream of each environment whose new observation is not the stored next observation of its last step."""
        if not (self.full or self.pos > 0):
            return
        if self.optimize_memory_usage:
            # The previous add wrote its next observation into the row about to be overwritten
            previous_next_obs: NumpyObs = self.observations[self.pos]
        else:
            newest = (self.pos - 1) % self.buffer_size
            previous_next_obs = self._index_obs(self.next_observations, newest)
        broken = np.zeros(self.n_envs, dtype=bool)
        if isinstance(previous_next_obs, dict):
            assert isinstance(obs, dict)
            for key, stored in previous_next_obs.items():
                broken |= _rows_differ(np.asarray(obs[key]), stored)
        else:
            broken = _rows_differ(np.asarray(obs), previous_next_obs)
        if broken.any():
            end_newest_episodes(self, broken)

    @staticmethod
    def _index_obs(observations: NumpyObs, *indices: Any) -> NumpyObs:
        return map_observations(lambda array: array[indices], observations)

    def sample(  # type: ignore[override]
        self, batch_size: int, env: VecNormalize | None = None, replay_fraction: float = 1.0
    ) -> SegmentSamples:
        """
        Sample segments whose first step is drawn uniformly among the stored transitions (and environments); with
        ``replay_fraction`` < 1, the rest of the batch are the newest segments (see :func:`newest_windows`).

        :param batch_size: Number B of segments
        :param env: associated VecEnv to normalize the observations/rewards when sampling
        :param replay_fraction: Share of the batch drawn uniformly from replay (1.0: all of it)
        :return: B segments of ``segment_length`` steps, the uniformly drawn ones first
        """
        _, n_stored = stored_range(self)
        if n_stored < 1:
            raise ValueError("SegmentReplayBuffer.sample: the buffer holds no complete transition yet")
        n_replay, n_online = mixed_batch_sizes(batch_size, replay_fraction)
        starts = np.random.randint(0, n_stored, size=n_replay)
        env_indices = np.random.randint(0, self.n_envs, size=n_replay)
        if n_online:
            newest_starts, newest_envs = newest_windows(n_online, n_stored, self.n_envs, self.segment_length)
            starts, env_indices = np.concatenate([starts, newest_starts]), np.concatenate([env_indices, newest_envs])
        return self.get_segments(starts, env_indices, env=env)

    def get_segments(
        self, start_indices: np.ndarray, env_indices: np.ndarray, env: VecNormalize | None = None
    ) -> SegmentSamples:
        """
        Gather the segments that start at the given transitions.

        :param start_indices: Age rank of each segment's first transition among the stored ones of its environment,
            0 for the oldest, shape (B,)
        :param env_indices: Environment of each segment, shape (B,)
        :param env: associated VecEnv to normalize the observations/rewards when sampling
        :return: The segments
        """
        oldest, n_stored = stored_range(self)
        start_indices = np.asarray(start_indices, dtype=np.int64)
        if np.any(start_indices < 0) or np.any(start_indices >= n_stored):
            raise IndexError(f"SegmentReplayBuffer: start indices must lie in [0, {n_stored}), the stored transitions")
        age = start_indices[:, None] + np.arange(self.segment_length)[None, :]  # (B, L)
        rows = (oldest + age) % self.buffer_size
        cols = np.asarray(env_indices, dtype=np.int64)[:, None]

        episode_ends = self.dones[rows, cols]
        terminations = episode_ends * (1.0 - self.timeouts[rows, cols])
        ends_before = np.cumsum(episode_ends, axis=1) - episode_ends
        valid = ((age < n_stored) & (ends_before == 0)).astype(np.float32)

        if self.optimize_memory_usage:
            next_obs = self._index_obs(self.observations, (rows + 1) % self.buffer_size, cols)
        else:
            next_obs = self._index_obs(self.next_observations, rows, cols)
        # Fancy indexing already copied every array out of the storage: hand them to torch without a second copy
        # (which also avoids a slow reallocation of arrays this large, measured at several ms per batch on CPU)
        return SegmentSamples(
            observations=self._to_torch(self._normalize_obs(self._index_obs(self.observations, rows, cols), env)),
            actions=self._to_torch(self.actions[rows, cols]),
            next_observations=self._to_torch(self._normalize_obs(next_obs, env)),
            rewards=self._to_torch(self._normalize_reward(self.rewards[rows, cols], env)),
            terminations=self._to_torch(terminations),
            episode_ends=self._to_torch(episode_ends),
            valid=self._to_torch(valid),
            behaviour_log_probs=self._to_torch(self.behaviour_log_probs[rows, cols]),
        )

    def _to_torch(self, array: NumpyObs) -> Any:
        """Convert freshly gathered arrays (or a dict of them) to tensors, sharing their memory on CPU."""
        return map_observations(lambda value: self.to_torch(value, copy=False), array)

    def reset(self) -> None:
        super().reset()
        self._staged_log_prob = None


class DictSegmentReplayBuffer(SegmentReplayBuffer, DictReplayBuffer):  # type: ignore[misc]  # sample() is ours
    """
    :class:`SegmentReplayBuffer` for Dict observation spaces, on top of SB3's ``DictReplayBuffer`` storage:
    observations and next observations are dicts of arrays, and so are those of the sampled segments.
    ``optimize_memory_usage`` is not supported (as in ``DictReplayBuffer``).
    See :class:`SegmentReplayBuffer` for the parameters.
    """

    observation_space: spaces.Dict
    obs_shape: dict[str, tuple[int, ...]]  # type: ignore[assignment]
    observations: dict[str, np.ndarray]  # type: ignore[assignment]
    next_observations: dict[str, np.ndarray]  # type: ignore[assignment]


def stored_range(buffer: ReplayBuffer) -> tuple[int, int]:
    """
    :param buffer: SB3's ``ReplayBuffer`` or a subclass
    :return: The row of the oldest sampleable transition and the number of sampleable transitions per environment,
        so that the transition of age rank k (0: the oldest) lies in row ``(oldest + k) % buffer.buffer_size``
    """
    if not buffer.full:
        return 0, buffer.pos
    if buffer.optimize_memory_usage:
        # Row ``pos`` holds the newest next observation: its own transition is gone
        return (buffer.pos + 1) % buffer.buffer_size, buffer.buffer_size - 1
    return buffer.pos, buffer.buffer_size


def mixed_batch_sizes(batch_size: int, replay_fraction: float) -> tuple[int, int]:
    """
    Split a batch between replay and the newest data, as Acme's MPO does with ``replay_fraction``.

    :param batch_size: The batch size B
    :param replay_fraction: The share f of the batch drawn uniformly from replay, in (0, 1]
    :return: round(f·B) samples from replay and B − round(f·B) of the newest data
    """
    if not 0.0 < replay_fraction <= 1.0:
        raise ValueError(f"replay_fraction={replay_fraction!r} is invalid, expected a float in (0, 1]")
    n_replay = round(replay_fraction * batch_size)
    return n_replay, batch_size - n_replay


def newest_windows(count: int, n_stored: int, n_envs: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """
    The newest data of a mixed batch: the ``count`` newest windows of ``span`` consecutive transitions that end at or
    before the newest stored one, i.e. the contents of a FIFO queue of the newest data (Acme's online queue) that every
    batch reads in full. Window i (0: the newest) belongs to environment i mod n_envs and starts at age rank
    max(n_stored − span − ⌊i / n_envs⌋, 0) (early on, when fewer windows are stored, the oldest start repeats).

    :param count: Number of windows
    :param n_stored: Transitions stored per environment (age ranks 0, the oldest, to n_stored − 1)
    :param n_envs: Number of environments
    :param span: Transitions per window (a segment's length, an n-step return's n, or 1)
    :return: Each window's start age rank and environment, shape (count,) each
    """
    index = np.arange(count)
    return np.maximum(n_stored - span - index // n_envs, 0), index % n_envs


def _concatenate(first: Any, second: Any) -> Any:
    """
    Join two batches of the same NamedTuple type along dim 0: tensors, dicts of tensors (Dict observations), and
    fields that SB3 leaves None (``discounts`` without n-step returns).
    """
    if first is None:
        return None
    if isinstance(first, dict):
        return {key: th.cat([first[key], second[key]]) for key in first}
    if isinstance(first, th.Tensor):
        return th.cat([first, second])
    return type(first)(*(_concatenate(a, b) for a, b in zip(first, second, strict=True)))


def sample_mixed(
    buffer: ReplayBuffer, batch_size: int, replay_fraction: float = 1.0, env: VecNormalize | None = None
) -> ReplayBufferSamples | SegmentSamples:
    """
    A batch of which ``replay_fraction`` is drawn uniformly from replay (the buffer's own ``sample``) and the rest is
    the newest data (:func:`newest_windows`): segments for a :class:`SegmentReplayBuffer`, transitions otherwise,
    whose windows span ``buffer.n_steps`` for SB3's ``NStepReplayBuffer`` so that their returns are complete (their
    environments are drawn by SB3's ``_get_samples``, among data of the same age). With 1.0 it is ``buffer.sample``.

    :param buffer: SB3's ``ReplayBuffer``, ``DictReplayBuffer`` or ``NStepReplayBuffer``, or a segment buffer
    :param batch_size: Number of samples (segments for a segment buffer)
    :param replay_fraction: Share of the batch drawn uniformly from replay, in (0, 1]
    :param env: associated VecEnv to normalize the observations/rewards when sampling
    :return: The batch, the uniformly drawn samples first
    """
    if isinstance(buffer, SegmentReplayBuffer):
        return buffer.sample(batch_size, env=env, replay_fraction=replay_fraction)
    n_replay, n_online = mixed_batch_sizes(batch_size, replay_fraction)
    if n_online == 0:
        return buffer.sample(batch_size, env=env)
    oldest, n_stored = stored_range(buffer)
    starts, _ = newest_windows(n_online, n_stored, 1, getattr(buffer, "n_steps", 1))
    newest = buffer._get_samples((oldest + starts) % buffer.buffer_size, env=env)
    return newest if n_replay == 0 else _concatenate(buffer.sample(n_replay, env=env), newest)


def _rows_differ(new: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """
    Compare each environment's new observation with the stored one, after casting it to the storage dtype
    (as storing it would). NaNs at the same place count as equal.

    :param new: New observations, any shape holding n_envs rows
    :param stored: Stored observations, shape (n_envs, ...)
    :return: One bool per environment, True where they differ
    """
    new = new.astype(stored.dtype, copy=False).reshape(stored.shape)
    differ = new != stored
    if np.issubdtype(stored.dtype, np.floating):
        differ &= ~(np.isnan(new) & np.isnan(stored))
    return differ.reshape(stored.shape[0], -1).any(axis=1)


def end_newest_episodes(buffer: ReplayBuffer, env_mask: np.ndarray | None = None) -> None:
    """
    End the newest stored episode of some environments at the newest stored step, for when their streams continue
    with a fresh episode (the environments were reset, a loaded buffer is continued), so that no n-step return or
    segment joins the two. The step becomes a time-limit truncation, keeping its bootstrap, where the buffer tells
    truncations apart (``handle_timeout_termination``); else a termination, as every episode end there is (SB3's
    ``add`` then never writes ``timeouts``, so a flag set here would outlive the row and turn a later termination
    stored in it into a truncation). With ``optimize_memory_usage``, whose next observation is about to be
    overwritten, SB3 allows no timeout handling: a termination too.
    Works on SB3's ``ReplayBuffer`` and its subclasses; an empty buffer is left alone.

    :param buffer: The replay buffer
    :param env_mask: The environments whose episode to end, one bool each (default: all)
    """
    if not (buffer.full or buffer.pos > 0):
        return
    env_mask = np.ones(buffer.n_envs, dtype=bool) if env_mask is None else env_mask
    newest = (buffer.pos - 1) % buffer.buffer_size
    open_episodes = env_mask & (buffer.dones[newest] == 0)
    buffer.dones[newest, open_episodes] = 1.0
    if buffer.handle_timeout_termination:
        buffer.timeouts[newest, open_episodes] = 1.0


def truncate_newest_episodes(buffer: ReplayBuffer) -> None:
    """
    End the newest stored episode of every environment, for when the environments' streams continue with fresh
    episodes: with the buffer's own ``truncate_last_trajectory`` where it has one (SB3's ``HerReplayBuffer``, which
    also closes its record of the episode, and :class:`SegmentReplayBuffer`), else with :func:`end_newest_episodes`.

    :param buffer: The replay buffer
    """
    truncate = getattr(buffer, "truncate_last_trajectory", None)
    if truncate is not None:
        truncate()
    else:
        end_newest_episodes(buffer)


def default_replay_buffer_class(
    q_target: str, n_steps: int, replay_buffer_class: type[ReplayBuffer] | None, observation_space: spaces.Space
) -> type[ReplayBuffer]:
    """
    :param q_target: ``"retrace"`` or ``"n_step"``
    :param n_steps: The n-step horizon
    :param replay_buffer_class: The class asked for (None: the one MPO or SB3 picks)
    :param observation_space: The environment's observation space
    :return: The class the replay buffer will be: the one asked for, else the segment buffer for Retrace, else SB3's
        pick (``DictReplayBuffer`` for Dict observations, ``NStepReplayBuffer`` for n_steps > 1, ``ReplayBuffer``)
    """
    if replay_buffer_class is not None:
        return replay_buffer_class
    if q_target == "retrace":
        return SegmentReplayBuffer
    if isinstance(observation_space, spaces.Dict):
        return DictReplayBuffer
    return NStepReplayBuffer if n_steps > 1 else ReplayBuffer


def replay_settings_problem(
    q_target: str,
    n_steps: int,
    segment_length: int,
    gamma: float,
    replay_buffer_class: type[ReplayBuffer] | None,
    replay_buffer_kwargs: dict[str, Any],
    observation_space: spaces.Space,
) -> str | None:
    """
    Why the replay buffer asked for cannot give the critic target what MPO's arguments say it needs, before SB3
    builds it. Retrace reads trajectory segments of ``segment_length`` steps. N-step returns read SB3's
    ``NStepReplayBuffer``, which stores no Dict observations, which SB3 silently replaces by any other class (a
    ``HerReplayBuffer``, say: 1-step targets instead), and whose horizon and discount SB3 takes from MPO's arguments or,
    for a class of the user's, from ``replay_buffer_kwargs`` (where they must then agree with MPO's).

    :param q_target: ``"retrace"`` or ``"n_step"``
    :param n_steps: The n-step horizon
    :param segment_length: The Retrace segment length
    :param gamma: The discount
    :param replay_buffer_class: The class asked for (None: the one MPO or SB3 picks)
    :param replay_buffer_kwargs: The arguments asked for the buffer
    :param observation_space: The environment's observation space
    :return: The problem, in words that name the parameters and what they accept, or None when there is none
    """
    name = None if replay_buffer_class is None else replay_buffer_class.__name__
    if q_target == "retrace":
        if replay_buffer_class is not None and not issubclass(replay_buffer_class, SegmentReplayBuffer):
            return (
                f"replay_buffer_class={name} is invalid with q_target='retrace' (the default), expected None or a "
                "SegmentReplayBuffer subclass; pass q_target='n_step' to train on a transition buffer (a "
                "HerReplayBuffer too, with n_steps=1)"
            )
        return _disagreement(replay_buffer_kwargs, {"segment_length": segment_length})
    if replay_buffer_class is not None and issubclass(replay_buffer_class, SegmentReplayBuffer):
        return (
            f"replay_buffer_class={name} is invalid with q_target='n_step', which trains on transitions, not segments; "
            "expected None or a transition buffer, or q_target='retrace' (the default) with it"
        )
    own_horizon = replay_buffer_class is not None and issubclass(replay_buffer_class, NStepReplayBuffer)
    if n_steps > 1 and replay_buffer_class is not None and not own_horizon:
        return (
            f"n_steps={n_steps} is invalid with replay_buffer_class={name}, which samples single transitions (SB3 "
            "would ignore n_steps and train 1-step targets); expected n_steps=1 with it, or replay_buffer_class=None "
            "for SB3's NStepReplayBuffer"
        )
    if n_steps > 1 and replay_buffer_class is None and isinstance(observation_space, spaces.Dict):
        return (
            f"n_steps={n_steps} is invalid with Dict observations, which SB3's NStepReplayBuffer does not store; "
            "expected n_steps=1, or q_target='retrace' (the default), whose segment replay stores them"
        )
    # A buffer of the user's with n_steps=1 keeps its own horizon (SB3's advice for a custom n-step buffer)
    return _disagreement(replay_buffer_kwargs, {"gamma": gamma, **({"n_steps": n_steps} if n_steps > 1 else {})})


def _disagreement(replay_buffer_kwargs: dict[str, Any], settings: dict[str, Any]) -> str | None:
    """
    :param replay_buffer_kwargs: The arguments asked for the buffer
    :param settings: MPO's arguments that the buffer must share, by name
    :return: The first of them that ``replay_buffer_kwargs`` sets otherwise, in words, or None
    """
    for key, value in settings.items():
        if key in replay_buffer_kwargs and replay_buffer_kwargs[key] != value:
            return (
                f"replay_buffer_kwargs[{key!r}]={replay_buffer_kwargs[key]!r} disagrees with {key}={value!r}: the buffer "
                f"and the critic target would use different values; expected {key}={replay_buffer_kwargs[key]!r} as "
                "MPO's argument (the buffer takes it from there), or the same value in both"
            )
    return None
