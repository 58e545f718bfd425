"""
Train MPO beside SB3 / sb3-contrib baselines in one run on this machine and store one small JSON file per run.

Baselines use RL Zoo's tuned hyperparameters (rl_zoo3/hyperparams/<algo>.yml); MPO uses its own RL Zoo file
(sb3_mpo/hyperparams/mpo.yml) updated by ``--mpo-kwargs``.
Finished runs are skipped, so an interrupted comparison resumes where it stopped; each file is written atomically.

Example (the issue-2 comparison on Pendulum-v1)::

    python benchmarks/compare.py --algos mpo sac --env Pendulum-v1 --seeds 0 1 2 3 4 --steps 20000 --tag pendulum
    python benchmarks/compare.py --summary benchmarks/results/pendulum
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from sb3_mpo.common.hyperparams import load_hyperparams, zoo_entry_to_kwargs

RESULTS = Path(__file__).parent / "results"


def zoo_hyperparams(algo: str, env_id: str) -> dict[str, Any]:
    """RL Zoo's tuned hyperparameters for ``algo`` on ``env_id``, as constructor keyword arguments."""
    import rl_zoo3
    import yaml

    with open(Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo}.yml") as file:
        entry = dict(yaml.safe_load(file)[env_id])
    for key in ("normalize", "n_envs", "env_wrapper", "callback", "frame_stack"):
        if entry.get(key) not in (None, False, 1):
            raise NotImplementedError(f"compare.py does not reproduce rl_zoo3's {key!r} for {algo} on {env_id}")
    kwargs = zoo_entry_to_kwargs(entry)
    noise_type, noise_std = kwargs.pop("noise_type", None), kwargs.pop("noise_std", None)
    if noise_type is not None:
        kwargs["noise"] = (noise_type, noise_std)
    return kwargs


def make_model(algo: str, env_id: str, seed: int, mpo_kwargs: dict[str, Any]):
    from sb3_contrib import TQC
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    from sb3_mpo import MPO

    if algo == "mpo":
        kwargs = {**load_hyperparams(env_id), **mpo_kwargs}
        return MPO("MlpPolicy", env_id, seed=seed, **kwargs), kwargs
    classes = {"sac": SAC, "td3": TD3, "tqc": TQC}
    kwargs = zoo_hyperparams(algo, env_id)
    model_kwargs = {**kwargs}
    if "noise" in model_kwargs:
        noise_type, noise_std = model_kwargs.pop("noise")
        assert noise_type == "normal", noise_type
        import gymnasium as gym

        n_actions = gym.make(env_id).action_space.shape[0]
        model_kwargs["action_noise"] = NormalActionNoise(np.zeros(n_actions), noise_std * np.ones(n_actions))
    return classes[algo]("MlpPolicy", env_id, seed=seed, **model_kwargs), kwargs


def run_one(job: dict[str, Any]) -> str:
    """Train one (algo, env, seed), evaluating every ``eval_freq`` steps; write its result file atomically."""
    import torch as th
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    th.set_num_threads(1)
    out = Path(job["path"])
    model, hyperparams = make_model(job["algo"], job["env"], job["seed"], job["mpo_kwargs"])
    eval_env = make_vec_env(job["env"], n_envs=1, seed=10_000 + job["seed"])
    curve, train_seconds = [], 0.0
    while model.num_timesteps < job["steps"]:
        start = time.perf_counter()
        model.learn(min(job["eval_freq"], job["steps"] - model.num_timesteps), reset_num_timesteps=False)
        train_seconds += time.perf_counter() - start
        mean, std = evaluate_policy(model, eval_env, n_eval_episodes=job["eval_episodes"], deterministic=True)
        curve.append({"step": int(model.num_timesteps), "mean": float(mean), "std": float(std)})
    n_updates = int(getattr(model, "_n_updates", 0))
    result = {
        **{key: job[key] for key in ("algo", "env", "seed", "steps", "tag")},
        "final_return": curve[-1]["mean"],
        "curve": curve,
        "train_seconds": train_seconds,
        "env_steps_per_second": model.num_timesteps / train_seconds,
        "gradient_steps_per_second": n_updates / train_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hyperparams": {key: repr(value) for key, value in hyperparams.items()},
        "hyperparams_source": "sb3_mpo/hyperparams/mpo.yml + --mpo-kwargs" if job["algo"] == "mpo" else "rl_zoo3 tuned",
        "versions": _versions(),
        "commit": _commit(),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cores",
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    return (
        f"{job['algo']} seed {job['seed']}: final {result['final_return']:.1f}, {result['env_steps_per_second']:.1f} steps/s"
    )


def _versions() -> dict[str, str]:
    import sb3_contrib
    import stable_baselines3
    import torch

    import sb3_mpo

    return {
        "sb3": stable_baselines3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
        "torch": torch.__version__,
        "sb3_mpo": sb3_mpo.__version__,
    }


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summary(folder: Path) -> None:
    """Print per-seed final returns and steps/s, and each algorithm's median speed relative to the first one."""
    results = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    by_algo: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by_algo.setdefault(result["algo"], []).append(result)
    print(f"{'algo':6} {'seed':>4} {'final return':>13} {'env steps/s':>12} {'grad steps/s':>13}")
    for algo, runs in by_algo.items():
        for run in sorted(runs, key=lambda r: r["seed"]):
            print(
                f"{algo:6} {run['seed']:>4} {run['final_return']:>13.1f} {run['env_steps_per_second']:>12.1f}"
                f" {run['gradient_steps_per_second']:>13.1f}"
            )
        finals = [run["final_return"] for run in runs]
        print(f"{algo:6} mean {np.mean(finals):>13.1f} ± {np.std(finals):.1f} (n={len(runs)})")
    algos = list(by_algo)
    if len(algos) > 1:
        speeds = {algo: float(np.median([run["train_seconds"] / run["steps"] for run in by_algo[algo]])) for algo in algos}
        for algo in algos[1:]:
            print(f"median wall-clock per env step, {algos[0]} / {algo}: {speeds[algos[0]] / speeds[algo]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["mpo", "sac"], choices=["mpo", "sac", "td3", "tqc"])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--eval-freq", type=int, default=2_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--mpo-kwargs", type=json.loads, default={}, help="JSON dict of MPO constructor arguments")
    parser.add_argument("--tag", default="default", help="results go to benchmarks/results/<tag>/")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes (one per core)")
    parser.add_argument("--summary", type=Path, help="only print the summary of a results folder")
    args = parser.parse_args()
    if args.summary is not None:
        summary(args.summary)
        return

    folder = RESULTS / args.tag
    folder.mkdir(parents=True, exist_ok=True)
    jobs = []
    # Interleave algorithms so that each pair of concurrent runs sees the same machine load
    for seed in args.seeds:
        for algo in args.algos:
            path = folder / f"{algo}_{args.env}_seed{seed}.json"
            if path.exists():
                print(f"skip {path.name}: finished")
                continue
            jobs.append(
                dict(
                    algo=algo,
                    env=args.env,
                    seed=seed,
                    steps=args.steps,
                    eval_freq=args.eval_freq,
                    eval_episodes=args.eval_episodes,
                    mpo_kwargs=args.mpo_kwargs,
                    tag=args.tag,
                    path=str(path),
                )
            )
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        for line in pool.imap_unordered(run_one, jobs):
            print(line, flush=True)
    summary(folder)


if __name__ == "__main__":
    main()
