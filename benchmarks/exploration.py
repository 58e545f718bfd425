"""
Exploration suites (``kind: exploration``): how much of a state space a learner visits, without RL Zoo.

The learners are State Marginal Matching on MPO (1 and 4 skills), plain MPO, SAC and a uniform-random policy, all with
two hidden layers of 64 units, batch 128 and 1000 warm-up steps, so that only the exploration differs. A run reports,
for the states of its replay buffer (every state visited in training) and of 20 stochastic episodes of its final policy
(for SMM the historical average of its snapshots, one per episode, as the paper prescribes), the metrics of
:mod:`sb3_mpo.exploration.metrics` on a 20 x 20 grid over the first two state dimensions, and whether and when a
training episode terminated (MountainCarContinuous-v0: reached the goal). The runs take minutes, so they keep no
mid-run checkpoint: an interrupted one starts again.
"""

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.checkpoints import WarningRecord
from benchmarks.report import (
    collect,
    mean_and_spread,
    provenance_lines,
    reading_section,
    unusable_section,
    warnings_section,
)
from benchmarks.results import SCHEMA
from benchmarks.stamp import git_commit, library_versions, machine
from benchmarks.suite import Job, Suite

#: The learners an exploration suite may name, and their settings: the base algorithm (None: uniform-random actions)
#: and the number of SMM skills (absent: no SMM)
LEARNERS: dict[str, dict[str, Any]] = {
    "random": {"algo": None},
    "mpo": {"algo": "mpo"},
    "sac": {"algo": "sac"},
    "mpo_smm1": {"algo": "mpo", "n_skills": 1},
    "mpo_smm4": {"algo": "mpo", "n_skills": 4},
}
#: Stochastic episodes of the final policy whose states are measured
ROLLOUT_EPISODES = 20
#: The environment without a goal: its page has no goal column, and it lists the visits per room instead
POINT_ROOMS = "sb3_mpo/PointRooms-v0"


def unit_square(states: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map the first two state dimensions to [0, 1]² for the grid metrics."""
    return np.clip((states[:, :2] - low[:2]) / (high[:2] - low[:2]), 0.0, 1.0)


def state_reached(obs: Any, dones: np.ndarray, infos: list[dict[str, Any]]) -> np.ndarray:
    """The state the first env of a one-env VecEnv reached: the episode's last one where it ended (SB3 resets it)."""
    return infos[0]["terminal_observation"] if dones[0] else np.asarray(obs)[0]


def rollout_states(predict: Any, env: Any, episodes: int) -> np.ndarray:
    """States visited by ``predict`` over full stochastic episodes of a one-env VecEnv."""
    states, obs, done_episodes = [], env.reset(), 0
    episode_start = np.ones(1, dtype=bool)
    while done_episodes < episodes:
        action, _ = predict(obs, episode_start=episode_start, deterministic=False)
        obs, _, dones, infos = env.step(action)
        states.append(state_reached(obs, dones, infos))
        episode_start, done_episodes = dones, done_episodes + int(dones[0])
    return np.array(states)


def first_termination(dones: np.ndarray, infos: list[dict[str, Any]]) -> bool:
    """Whether the first env of a step ended its episode by termination (a goal), not by the time limit."""
    return bool(dones[0]) and not infos[0].get("TimeLimit.truncated", False)


def run_exploration_job(job: Job, torch_threads: int = 1) -> dict[str, Any]:
    """
    Train one learner of :data:`LEARNERS` on ``job.env`` for ``job.steps`` steps and measure where it went.

    :param job: The run (``job.algo`` names the learner)
    :param torch_threads: Threads torch may use in this worker
    :return: Its result record (see :data:`benchmarks.results.EXPLORATION_KEYS`)
    """
    import gymnasium as gym
    import torch as th
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    import sb3_mpo.exploration  # noqa: F401  (registers PointRooms)
    from sb3_mpo import MPO
    from sb3_mpo.exploration import HistoricalAveragePolicy, PolicySnapshots, SkillWrapper, SMMReplayBuffer
    from sb3_mpo.exploration.metrics import exploration_metrics

    class GoalTracker(BaseCallback):
        """The first environment step at which a training episode terminates."""

        first_goal: int | None = None

        def _on_step(self) -> bool:
            if self.first_goal is None and first_termination(self.locals["dones"], self.locals["infos"]):
                self.first_goal = self.num_timesteps
            return True

    th.set_num_threads(torch_threads)
    commit = git_commit()
    settings = LEARNERS[job.algo]
    n_skills = settings.get("n_skills")
    model: Any = None
    record = WarningRecord(lambda: 0 if model is None else model.num_timesteps)

    def make_env() -> gym.Env:
        env = gym.make(job.env)
        return SkillWrapper(env, n_skills) if n_skills else env

    with record.recording():  # building the envs: their warnings are kept at step 0
        probe = gym.make(job.env)
        base_space: Any = probe.observation_space  # a Box: the metrics read its first two dimensions
        low, high = base_space.low, base_space.high
        probe.close()
        env = make_vec_env(make_env, n_envs=1, seed=job.seed)
    start = time.perf_counter()
    goals = GoalTracker()
    action_shape = tuple(env.action_space.shape or ())
    predict: Callable[..., Any]
    if settings["algo"] is None:
        rng = np.random.default_rng(job.seed)
        env.reset()
        visited = []
        for step in range(job.steps):
            obs, _, dones, infos = env.step(rng.uniform(-1, 1, size=(1, *action_shape)))
            visited.append(state_reached(obs, dones, infos))
            if goals.first_goal is None and first_termination(dones, infos):
                goals.first_goal = step + 1
        replay_states = np.array(visited)

        def predict(obs: np.ndarray, episode_start: Any = None, deterministic: bool = False) -> tuple[np.ndarray, None]:
            return rng.uniform(-1, 1, size=(len(obs), *action_shape)), None

    else:
        kwargs: dict[str, Any] = dict(policy_kwargs=dict(net_arch=[64, 64]), batch_size=128, learning_starts=1000)
        if n_skills:
            kwargs.update(replay_buffer_class=SMMReplayBuffer, replay_buffer_kwargs=dict(n_skills=n_skills))
        algo = MPO if settings["algo"] == "mpo" else SAC
        if algo is MPO:  # 1-step targets, with SMM or without: SMM's rewards are per transition
            kwargs["q_target"] = "n_step"
        # SMM's rollouts follow the historical average of the policy's snapshots; a plain learner's, the policy itself
        snapshots = PolicySnapshots(snapshot_freq=max(job.steps // 10, 1)) if n_skills else None
        with record.recording():  # building the model too: its warnings are kept at step 0
            model = algo("MlpPolicy", env, seed=job.seed, **kwargs)
            model.learn(job.steps, callback=[goals] if snapshots is None else [goals, snapshots])
        buffer: Any = model.replay_buffer
        replay_states = buffer.next_observations[: buffer.size(), 0]
        predict = model.predict if snapshots is None else HistoricalAveragePolicy(snapshots.snapshots, seed=job.seed).predict
    train_seconds = time.perf_counter() - start
    rollout_env = make_vec_env(make_env, n_envs=1, seed=job.eval_seed)
    visited_in_rollouts = rollout_states(predict, rollout_env, ROLLOUT_EPISODES)
    env.close()
    rollout_env.close()
    return {
        "schema": SCHEMA,
        "kind": "exploration",
        "suite": job.suite,
        "algo": job.algo,
        "env": job.env,
        "seed": job.seed,
        "steps": job.steps,
        "replay": exploration_metrics(unit_square(replay_states, low, high)),
        "rollouts": exploration_metrics(unit_square(visited_in_rollouts, low, high)),
        "goal_reached": goals.first_goal is not None,
        "first_goal_step": goals.first_goal,
        "train_seconds": train_seconds,
        # Each distinct warning given while building and training the model (MPO's health checks, a library's), with the env
        # step of its first (where training started for the set-up's)
        "warnings": record.warnings,
        "torch_threads": torch_threads,
        "versions": library_versions(),
        "machine": machine(),
        "commit": commit,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def describe(result: dict[str, Any]) -> str:
    """One line about a finished exploration run."""
    goal = "yes" if result["goal_reached"] else "no"
    return f"coverage {result['replay']['coverage']:.3f} (replay), goal {goal}, {result['train_seconds'] / 60:.1f} min"


def _mean_std(runs: list[dict[str, Any]], source: str, key: str) -> str:
    return mean_and_spread([run[source][key] for run in runs], digits=3)


def env_tables(env: str, runs_by_learner: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The markdown table of one environment (mean ± std over seeds), and PointRooms' visits per room."""
    has_goal = env != POINT_ROOMS
    lines = [
        "| learner | seeds | steps | coverage (rollouts) | KL to uniform (rollouts) | coverage (replay) "
        "| KL to uniform (replay) | entropy (replay) |" + (" seeds reaching the goal |" if has_goal else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if has_goal else ""),
    ]
    for learner, runs in runs_by_learner.items():
        goal = f" {sum(run['goal_reached'] for run in runs)} / {len(runs)} |" if has_goal else ""
        lines.append(
            f"| {learner} | {len(runs)} | {runs[0]['steps']:,} | {_mean_std(runs, 'rollouts', 'coverage')} "
            f"| {_mean_std(runs, 'rollouts', 'kl_to_uniform')} | {_mean_std(runs, 'replay', 'coverage')} "
            f"| {_mean_std(runs, 'replay', 'kl_to_uniform')} | {_mean_std(runs, 'replay', 'entropy')} |" + goal
        )
    if not has_goal:
        lines += ["", "Visits per room in replay (rooms 0-3; the start is in room 0), mean over seeds:", ""]
        for learner, runs in runs_by_learner.items():
            fractions = np.mean([run["replay"]["room_fractions"] for run in runs], axis=0)
            lines.append(f"- {learner}: " + ", ".join(f"{value:.3f}" for value in fractions))
    else:
        lines += ["", "First step at which a training episode reached the goal, per seed:", ""]
        for learner, runs in runs_by_learner.items():
            steps = [f"{run['first_goal_step']:,}" for run in runs if run["goal_reached"]]
            lines.append(f"- {learner}: " + (", ".join(steps) if steps else "never"))
    return lines


def write_exploration_report(suite: Suite, results_dir: Path, out: Path, reading: Path | None = None) -> None:
    """
    Generate an exploration suite's page from its stored result files: the provenance of the runs, the maintainers'
    reading (``benchmarks/suites/<suite>.reading.md``) and one table per environment.

    :param suite: An exploration suite
    :param results_dir: The result store
    :param out: The page to write
    :param reading: A markdown file with the reading (default: the suite's ``.reading.md`` beside its YAML file)
    """
    runs, problems, missing = collect(suite, results_dir)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    every_run = [run for by_learner in runs.values() for chosen in by_learner.values() for run in chosen]
    lines = [
        *provenance_lines(suite, "Exploration suite", every_run, missing, problems),
        f"- Metrics: {ROLLOUT_EPISODES} stochastic episodes of the final policy (rollouts) and every state of training "
        "(replay), on a 20 x 20 grid over the first two state dimensions (`sb3_mpo.exploration.metrics`).",
        "",
        *reading_section(suite, reading),
    ]
    for env, by_learner in runs.items():
        if by_learner:
            lines += [f"## {env}", "", *env_tables(env, by_learner), ""]
    lines += warnings_section(every_run)
    lines += unusable_section(problems)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
