"""
Exploration benchmark of State Marginal Matching (issue 7): MPO+SMM (1 and 4 skills) beside plain MPO, SAC and a
uniform-random policy on PointRooms (coverage, state entropy and KL to uniform on a 20x20 grid, per-room visits), and
on MountainCarContinuous-v0 (which seeds reach the goal within the budget). One JSON file per run under
benchmarks/results/smm/; finished runs are skipped, so the benchmark resumes; local processes or Ray, as the suites.

    python -m benchmarks.smm --seeds 0 1 2 3 4 --steps 100000            # everything missing, one process per core
    python -m benchmarks.smm --configs mpo mpo_smm4 --envs MountainCarContinuous-v0
    python -m benchmarks.smm --report docs/results/smm.md                 # tables from the stored files

Every learner uses two hidden layers of 64 units, batch 128 and 1000 warm-up steps (the same for all, so that only
the exploration differs); SMM snapshots the policy every tenth of the budget and is measured through the historical
average of the snapshots, one per episode, as the paper prescribes. Rollout metrics use 20 stochastic episodes.
"""

import argparse
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.backends import run_and_store
from benchmarks.stamp import library_versions, machine
from benchmarks.suite import RESULTS_DIR

CONFIGS: dict[str, dict[str, Any]] = {
    "random": {"algo": None},
    "mpo": {"algo": "mpo"},
    "sac": {"algo": "sac"},
    "mpo_smm1": {"algo": "mpo", "n_skills": 1},
    "mpo_smm4": {"algo": "mpo", "n_skills": 4},
}
ENVS = ("sb3_mpo/PointRooms-v0", "MountainCarContinuous-v0")
ROLLOUT_EPISODES = 20


@dataclass(frozen=True)
class SMMJob:
    config: str
    env: str
    seed: int
    steps: int

    @property
    def name(self) -> str:
        return f"{self.config}_{self.env.replace('/', '-')}_seed{self.seed}_{self.steps}"

    def result_path(self, results_dir: Path) -> Path:
        return results_dir / "smm" / f"{self.name}.json"


def _unit_square(states: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map the first two state dimensions to [0, 1]² for the grid metrics."""
    return np.clip((states[:, :2] - low[:2]) / (high[:2] - low[:2]), 0.0, 1.0)


def _rollout_states(predict, env, episodes: int) -> np.ndarray:
    """States visited by ``predict`` over full stochastic episodes of a one-env VecEnv."""
    states, obs, done_episodes = [], env.reset(), 0
    episode_start = np.ones(1, dtype=bool)
    while done_episodes < episodes:
        action, _ = predict(obs, episode_start=episode_start, deterministic=False)
        obs, _, dones, infos = env.step(action)
        states.append(infos[0]["terminal_observation"] if dones[0] else obs[0])
        episode_start, done_episodes = dones, done_episodes + int(dones[0])
    return np.array(states)


def run_smm_job(job: SMMJob) -> tuple[SMMJob, dict[str, Any] | None, str]:
    try:
        return job, _run(job), ""
    except Exception:
        return job, None, traceback.format_exc()


def _run(job: SMMJob) -> dict[str, Any]:
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
        """First environment step at which an episode terminates (MountainCar: the goal is reached)."""

        first_goal: int | None = None

        def _on_step(self) -> bool:
            for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
                if done and not info.get("TimeLimit.truncated", False) and self.first_goal is None:
                    self.first_goal = self.num_timesteps
            return True

    th.set_num_threads(1)
    settings = CONFIGS[job.config]
    n_skills = settings.get("n_skills")
    base_space = gym.make(job.env).observation_space
    low, high = base_space.low, base_space.high

    def make_env() -> gym.Env:
        env = gym.make(job.env)
        return SkillWrapper(env, n_skills) if n_skills else env

    env = make_vec_env(make_env, n_envs=1, seed=job.seed)
    rollout_env = make_vec_env(make_env, n_envs=1, seed=10_000 + job.seed)
    start = time.perf_counter()
    goals = GoalTracker()
    if settings["algo"] is None:
        rng = np.random.default_rng(job.seed)
        env.reset()
        visited = []
        for step in range(job.steps):
            obs, _, dones, infos = env.step(rng.uniform(-1, 1, size=(1, *env.action_space.shape)))
            visited.append(infos[0]["terminal_observation"] if dones[0] else obs[0])
            if dones[0] and not infos[0].get("TimeLimit.truncated", False) and goals.first_goal is None:
                goals.first_goal = step + 1
        replay_states = np.array(visited)

        def predict(obs, episode_start=None, deterministic=False):
            return rng.uniform(-1, 1, size=(len(obs), *env.action_space.shape)), None

    else:
        kwargs: dict[str, Any] = dict(policy_kwargs=dict(net_arch=[64, 64]), batch_size=128, learning_starts=1000)
        if n_skills:
            kwargs.update(replay_buffer_class=SMMReplayBuffer, replay_buffer_kwargs=dict(n_skills=n_skills))
        algo = MPO if settings["algo"] == "mpo" else SAC
        if algo is MPO:  # 1-step targets, with SMM or without: SMM's rewards are per transition (the results' setting)
            kwargs["q_target"] = "n_step"
        model = algo("MlpPolicy", env, seed=job.seed, **kwargs)
        snapshots = PolicySnapshots(snapshot_freq=max(job.steps // 10, 1))
        model.learn(job.steps, callback=[goals, snapshots])
        buffer = model.replay_buffer
        replay_states = buffer.next_observations[: buffer.size(), 0]  # type: ignore[union-attr]
        predict = HistoricalAveragePolicy(snapshots.snapshots, seed=job.seed).predict if n_skills else model.predict
    train_seconds = time.perf_counter() - start
    rollout_states = _rollout_states(predict, rollout_env, ROLLOUT_EPISODES)
    return {
        "config": job.config,
        "env": job.env,
        "seed": job.seed,
        "steps": job.steps,
        "replay": exploration_metrics(_unit_square(replay_states, low, high)),
        "rollouts": exploration_metrics(_unit_square(rollout_states, low, high)),
        "goal_reached": goals.first_goal is not None,
        "first_goal_step": goals.first_goal,
        "train_seconds": train_seconds,
        "versions": library_versions(),
        "machine": machine(),
    }


def _load(results_dir: Path) -> list[dict[str, Any]]:
    results = []
    for path in sorted((results_dir / "smm").glob("*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            print(f"skipped unreadable result file {path}: {error}", file=sys.stderr)
    return results


def report(results_dir: Path) -> str:
    """Markdown tables (mean ± std over seeds) from the stored files."""
    results = _load(results_dir)
    lines = []
    for env in ENVS:
        runs = [run for run in results if run["env"] == env]
        if not runs:
            continue
        lines += [f"### {env}", ""]
        has_goal = env != "sb3_mpo/PointRooms-v0"  # PointRooms has no goal
        lines += [
            "| configuration | seeds | steps | coverage (rollouts) | KL to uniform (rollouts) | coverage (replay) "
            "| KL to uniform (replay) | entropy (replay) |" + (" seeds reaching the goal |" if has_goal else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|" if has_goal else ""),
        ]
        for config in CONFIGS:
            chosen = [run for run in runs if run["config"] == config]
            if not chosen:
                continue

            def stat(source: str, key: str, chosen=chosen) -> str:
                values = np.array([run[source][key] for run in chosen])
                return f"{values.mean():.3f} ± {values.std():.3f}"

            goal = sum(run["goal_reached"] for run in chosen)
            lines.append(
                f"| {config} | {len(chosen)} | {chosen[0]['steps']:,} | {stat('rollouts', 'coverage')} "
                f"| {stat('rollouts', 'kl_to_uniform')} | {stat('replay', 'coverage')} | {stat('replay', 'kl_to_uniform')} "
                f"| {stat('replay', 'entropy')} |" + (f" {goal} / {len(chosen)} |" if has_goal else "")
            )
        if env == "sb3_mpo/PointRooms-v0":
            lines += ["", "Visits per room in replay (rooms 0-3; the start is in room 0), mean over seeds:", ""]
            for config in CONFIGS:
                chosen = [run for run in runs if run["config"] == config]
                if chosen:
                    fractions = np.mean([run["replay"]["room_fractions"] for run in chosen], axis=0)
                    lines.append(f"- {config}: " + ", ".join(f"{value:.3f}" for value in fractions))
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--envs", nargs="+", choices=ENVS, default=list(ENVS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--workers", type=int, help="local processes (default: one per core)")
    parser.add_argument("--ray-address", help="run on a Ray cluster ('auto', 'ray://host:10001') or 'local'")
    parser.add_argument("--report", type=Path, help="only write the markdown tables of the stored results to this file")
    args = parser.parse_args()
    if args.report is not None:
        args.report.write_text(report(args.results))
        print(f"wrote {args.report}")
        return 0
    jobs = [
        SMMJob(config, env, seed, args.steps)
        for env in args.envs
        for seed in args.seeds
        for config in args.configs
        if not SMMJob(config, env, seed, args.steps).result_path(args.results).exists()
    ]
    print(f"{len(jobs)} runs to do", flush=True)

    def describe(result: dict[str, Any]) -> str:
        goal = "yes" if result["goal_reached"] else "no"
        return f"coverage {result['replay']['coverage']:.3f} (replay), goal {goal}, {result['train_seconds'] / 60:.1f} min"

    backend = "ray" if args.ray_address else "local"
    failures = run_and_store(jobs, args.results, describe, backend, args.workers, args.ray_address, worker=run_smm_job)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
