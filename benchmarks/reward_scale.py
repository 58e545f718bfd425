"""
MPO under rescaled rewards, without VecNormalize: the E-step's temperature solved on every batch (``solve``, the
default) against one Adam step on the dual per update (``gradient``, the reference implementations' way), and the
solved temperature with PopArt's value normalisation (``popart``: ``value_normalization=True``).

    python -m benchmarks.reward_scale run --env Pendulum-v1 --steps 20000 --scales 1e-3 1 1e3 1e4 --seeds 0 1 2
    python -m benchmarks.reward_scale page                                                        # regenerate the page

Each run trains MPO with the environment's shipped entry (sb3_mpo/hyperparams/mpo.yml) on rewards multiplied by the
scale, then evaluates the deterministic policy on the unscaled environment (10 episodes), so returns are comparable
across scales. It also records the E-step's KL(q || pi_old) over training (the logged ``train/kl_q``, in units of its
bound epsilon). Results: benchmarks/results/reward_scale/<env>/<configuration>_x<scale>_seed<k>.json; page:
docs/results/reward_scale.md.
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium.wrappers import TransformReward
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy

from benchmarks.report import mean_and_spread
from benchmarks.results import write_result
from benchmarks.stamp import stamp
from benchmarks.suite import RESULTS_DIR
from sb3_mpo import MPO
from sb3_mpo.common.hyperparams import load_hyperparams

RESULTS = RESULTS_DIR / "reward_scale"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "results" / "reward_scale.md"
#: The maintainers' reading of the stored runs, placed on the page
READING = Path(__file__).with_name("reward_scale.reading.md")
#: MPO's arguments in each configuration
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "gradient": {"temperature_update": "gradient"},
    "solve": {"temperature_update": "solve"},
    "popart": {"temperature_update": "solve", "value_normalization": True},
}


class RecordKL(BaseCallback):
    """Keep the E-step KL that MPO logs after each of its training phases."""

    def __init__(self) -> None:
        super().__init__()
        self.kl: list[float] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        value = self.model.logger.name_to_value.get("train/kl_q")
        if value is not None:
            self.kl.append(float(value))


def run(env_id: str, scale: float, seed: int, configuration: str, steps: int) -> dict[str, Any]:
    code = stamp()  # the code as it is when the run starts
    hyperparams = load_hyperparams(env_id)
    env = TransformReward(gym.make(env_id), lambda reward: float(reward) * scale)
    model = MPO("MlpPolicy", env, seed=seed, **CONFIGURATIONS[configuration], **hyperparams)
    recorder = RecordKL()
    start = time.perf_counter()
    model.learn(steps, callback=recorder)
    seconds = time.perf_counter() - start
    eval_env = gym.make(env_id)
    eval_env.reset(seed=seed + 10_000)
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True, return_episode_rewards=True)
    kl = np.array(recorder.kl) / model.epsilon
    late = kl[len(kl) // 2 :]
    return {
        "env": env_id,
        "scale": scale,
        "seed": seed,
        "configuration": configuration,
        "temperature_update": model.temperature_update,
        "value_normalization": model.value_normalization,
        "steps": steps,
        "final_return": float(np.mean(returns)),
        "final_return_std": float(np.std(returns)),
        "kl_over_epsilon_median_second_half": float(np.median(late)),
        "kl_over_epsilon_max_second_half": float(np.max(late)),
        "final_temperature": float(model.multipliers.temperature),
        "train_seconds": seconds,
        "hyperparams": {key: repr(value) for key, value in hyperparams.items()},
        **code,
    }


def result_path(env_id: str, configuration: str, scale: float, seed: int) -> Path:
    return RESULTS / env_id / f"{configuration}_x{scale:g}_seed{seed}.json"


def within_unit_scale(returns: np.ndarray, unit_returns: np.ndarray | None) -> str:
    """
    Whether a group of runs ends inside the spread of the same configuration's runs on unscaled rewards (the goal of
    the reliability issue): its mean within their lowest and highest final return.

    :param returns: The group's final returns
    :param unit_returns: The final returns of the same environment, budget and configuration at scale 1, if stored
    :return: "yes", "no", or "—" where there is nothing to compare with
    """
    if unit_returns is None or len(unit_returns) < 2:
        return "—"
    return "yes" if unit_returns.min() <= returns.mean() <= unit_returns.max() else "no"


def write_page() -> None:
    """Regenerate the page from every stored run."""
    records = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*/*.json"))]
    lines = [
        "# MPO under rescaled rewards",
        "",
        "Generated by `python -m benchmarks.reward_scale page` from `benchmarks/results/reward_scale/`. MPO trains with",
        "the environment's shipped entry on rewards multiplied by the scale (no VecNormalize); the return is that of the",
        "deterministic policy on the unscaled environment (10 episodes), so it compares across scales. KL / ε is the",
        "E-step's achieved KL(q ‖ π_old) over its bound, logged after each training phase: median and maximum over the",
        "second half of training. `solve` is the default temperature update, `gradient` one Adam step on the dual,",
        "`popart` the solved temperature with PopArt's value normalisation (`value_normalization=True`).",
        "",
        "The goal is every scale's mean final return within the spread (lowest to highest) of the same configuration's",
        "runs at scale 1, with no collapse; the column 'within ×1 spread' says whether it is met (— where fewer than two",  # noqa: RUF001
        "runs at scale 1 are stored).",
        "",
        "| environment | steps | configuration | reward scale | seeds | final return (mean ± std over seeds) "
        "| within ×1 spread | KL / ε, median | KL / ε, max | commits |",  # noqa: RUF001
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, int, str, float], list[dict[str, Any]]] = {}
    for record in records:
        key = (record["env"], record["steps"], record.get("configuration", record["temperature_update"]), record["scale"])
        groups.setdefault(key, []).append(record)
    finals = {key: np.array([run["final_return"] for run in runs]) for key, runs in groups.items()}
    for (env_id, steps, update, scale), runs in sorted(groups.items()):
        returns = finals[(env_id, steps, update, scale)]
        within = within_unit_scale(returns, finals.get((env_id, steps, update, 1.0)))
        commits = ", ".join(sorted({run["commit"] for run in runs}))
        lines.append(
            f"| {env_id} | {steps} | {update} | {scale:g} | {len(runs)} | {mean_and_spread(returns)} | {within} "
            f"| {np.median([run['kl_over_epsilon_median_second_half'] for run in runs]):.2f} "
            f"| {max(run['kl_over_epsilon_max_second_half'] for run in runs):.2f} | {commits} |"
        )
    machines = sorted({record["machine"] for record in records})
    lines += ["", f"Machines: {'; '.join(machines)}." if machines else "No run is stored yet.", ""]
    if READING.is_file():
        lines += ["## Reading", "", READING.read_text().strip(), ""]
    PAGE.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train the missing runs (one after another), then write the page")
    run_parser.add_argument("--env", default="Pendulum-v1")
    run_parser.add_argument("--scales", type=float, nargs="+", default=[1e-3, 1.0, 1e3, 1e4])
    run_parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run_parser.add_argument("--configurations", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    run_parser.add_argument("--steps", type=int, default=20_000)
    commands.add_parser("page", help="regenerate the page only")
    args = parser.parse_args()
    if args.command == "run":
        th.set_num_threads(1)
        for seed in args.seeds:
            for scale in args.scales:
                for configuration in args.configurations:
                    path = result_path(args.env, configuration, scale, seed)
                    if path.exists():
                        continue
                    record = run(args.env, scale, seed, configuration, args.steps)
                    write_result(path, record)
                    kl = record["kl_over_epsilon_median_second_half"]
                    print(f"{path.name}: return {record['final_return']:.1f}, KL/eps {kl:.2f}", flush=True)
    write_page()
    print(PAGE.read_text())


if __name__ == "__main__":
    main()
