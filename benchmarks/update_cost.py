"""
The cost of one gradient step of MPO against SAC, TQC and CrossQ, in one process and one torch thread, the
algorithms taking turns (``--rounds`` rounds of ``--updates`` steps each) so that all see the same machine state.
Every algorithm has (256, 256) networks and batch 256 (CrossQ's critic too, whose default is wider) on the
environment's shapes; each first collects ``--warm-up`` steps so that its buffer is past ``learning_starts`` (and a
compiled update is compiled then: the time to compile is not in the cost per step).

    python -m benchmarks.update_cost --env HalfCheetah-v5            # measure, store, regenerate the page
    python -m benchmarks.update_cost --page                          # regenerate docs/results/update_cost.md only

Results: benchmarks/results/update_cost/<env>_<commit>.json; page: docs/results/update_cost.md (the medians and each
algorithm's median over SAC's, round by round).
"""

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from sb3_contrib import TQC, CrossQ
from stable_baselines3 import SAC
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from torch import nn

from benchmarks.results import write_result
from benchmarks.stamp import commit_time, stamp
from benchmarks.suite import RESULTS_DIR
from sb3_mpo import MPO

RESULTS = RESULTS_DIR / "update_cost"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "results" / "update_cost.md"
#: The maintainers' reading of the stored measurements, placed on the page before them
READING = Path(__file__).with_name("update_cost.reading.md")
NETWORK = [256, 256]

#: The shipped MuJoCo entries' networks
LN_TORSO: dict[str, Any] = {"policy_kwargs": {"layer_norm": True, "activation_fn": nn.ELU}}
#: Acme's default critic: a mixture of 5 Gaussians (Shahriari et al. 2022)
MIXTURE: dict[str, Any] = {"critic_mixture": 5}
#: SimBa's residual torso (Lee et al. 2024) with its ReLU
SIMBA_TORSO: dict[str, Any] = {"policy_kwargs": {"residual": True}}


def crossq_critic_1step(draws: int | None) -> tuple[type[OffPolicyAlgorithm], dict[str, Any], str]:
    """
    :param draws: None for a critic of expected values, else the return draws per sampled action of a mixture critic
    :return: The configuration of MPO with Acme's torso and CrossQ's critic, 1-step targets
    """
    policy_kwargs = {**LN_TORSO["policy_kwargs"], "batch_renorm": True}
    kwargs: dict[str, Any] = {"policy_kwargs": policy_kwargs, "q_target": "n_step"}
    words = "MPO, Acme's LayerNorm torso + ELU, CrossQ's BatchRenorm critic without target, 1-step targets"
    if draws is None:
        return MPO, kwargs, words
    policy_kwargs.update(MIXTURE)
    kwargs["mixture_return_samples"] = draws
    return MPO, kwargs, f"{words}, a mixture of 5 Gaussians with {draws} return draws per sampled action"


#: name -> (class, keyword arguments, what it is)
CONFIGURATIONS: dict[str, tuple[type[OffPolicyAlgorithm], dict[str, Any], str]] = {
    "sac": (SAC, {}, "SB3 SAC, defaults"),
    "tqc": (TQC, {}, "sb3-contrib TQC, defaults (2 critics x 25 quantiles)"),
    "crossq": (CrossQ, {"policy_kwargs": {"net_arch": {"pi": NETWORK, "qf": NETWORK}}}, "sb3-contrib CrossQ, 256-256 critic"),
    "mpo": (MPO, {}, "MPO, defaults (Retrace, N=20, temperature solved)"),
    "mpo_n10": (MPO, {"n_action_samples": 10}, "MPO, N=10"),
    "mpo_1step": (MPO, {"q_target": "n_step"}, "MPO, 1-step targets, N=20"),
    "mpo_gradient": (MPO, {"temperature_update": "gradient"}, "MPO, temperature by a gradient step"),
    "mpo_ln": (MPO, LN_TORSO, "MPO, Acme's LayerNorm torso + ELU"),
    "mpo_popart": (MPO, {"value_normalization": True}, "MPO, PopArt value normalisation"),
    "mpo_compiled": (MPO, {"compile_update": True}, "MPO, defaults, compiled losses (compile_update)"),
    "mpo_1step_compiled": (MPO, {"q_target": "n_step", "compile_update": True}, "MPO, 1-step targets, compiled losses"),
    "mpo_ln_compiled": (MPO, {**LN_TORSO, "compile_update": True}, "MPO, Acme's LayerNorm torso + ELU, compiled losses"),
    "mpo_ln_n10": (MPO, {**LN_TORSO, "n_action_samples": 10}, "MPO, Acme's LayerNorm torso + ELU, N=10"),
    "mpo_bf16": (MPO, {"target_precision": "bfloat16"}, "MPO, defaults, bfloat16 target pass (target_precision)"),
    "mpo_1step_bf16": (
        MPO,
        {"q_target": "n_step", "target_precision": "bfloat16"},
        "MPO, 1-step targets, bfloat16 target pass",
    ),
    "mpo_ln_bf16": (
        MPO,
        {**LN_TORSO, "target_precision": "bfloat16"},
        "MPO, Acme's LayerNorm torso + ELU, bfloat16 target pass",
    ),
    "mpo_ln_parametric": (
        MPO,
        {**LN_TORSO, "policy_improvement": "parametric"},
        "MPO, Acme's LayerNorm torso + ELU, parametric improvement",
    ),
    "mpo_ln_parametric_k4": (
        MPO,
        {**LN_TORSO, "policy_improvement": "parametric", "parametric_samples": 4},
        "MPO, Acme's LayerNorm torso + ELU, parametric improvement with 4 actions per half",
    ),
    "mpo_ln_parametric_bf16": (
        MPO,
        {**LN_TORSO, "policy_improvement": "parametric", "target_precision": "bfloat16"},
        "MPO, Acme's LayerNorm torso + ELU, parametric improvement, bfloat16 target pass",
    ),
    "mpo_simba": (MPO, SIMBA_TORSO, "MPO, SimBa's residual torso (two blocks of width 256, 4x inner width)"),
    "mpo_simba_bf16": (
        MPO,
        {**SIMBA_TORSO, "target_precision": "bfloat16"},
        "MPO, SimBa's residual torso, bfloat16 target pass",
    ),
    "mpo_simba128_bf16": (
        MPO,
        {"policy_kwargs": {"residual": True, "net_arch": [128, 128]}, "target_precision": "bfloat16"},
        "MPO, SimBa's residual torso of width 128 (4x inner width), bfloat16 target pass",
    ),
    "mpo_ln_brn": (
        MPO,
        {"policy_kwargs": {**LN_TORSO["policy_kwargs"], "batch_renorm": True}},
        "MPO, Acme's LayerNorm torso + ELU, CrossQ's BatchRenorm critic without target",
    ),
    "mpo_ln_brn_pair": (
        MPO,
        {"policy_kwargs": {**LN_TORSO["policy_kwargs"], "batch_renorm": True, "n_critics": 2}},
        "MPO, Acme's LayerNorm torso + ELU, a pair of CrossQ's BatchRenorm critics without target (clipped double Q)",
    ),
    "mpo_ln_brn_bf16": (
        MPO,
        {"policy_kwargs": {**LN_TORSO["policy_kwargs"], "batch_renorm": True}, "target_precision": "bfloat16"},
        "MPO, Acme's LayerNorm torso + ELU, CrossQ's BatchRenorm critic without target, bfloat16 sampled pass",
    ),
    **{
        "mpo_ln_brn_1step" + ("" if draws is None else f"_mog_z{draws}"): crossq_critic_1step(draws)
        for draws in (None, 1, 16, 128)
    },
    "mpo_bf16_compiled": (
        MPO,
        {"target_precision": "bfloat16", "compile_update": True},
        "MPO, defaults, bfloat16 target pass, compiled losses",
    ),
    "mpo_1step_bf16_compiled": (
        MPO,
        {"q_target": "n_step", "target_precision": "bfloat16", "compile_update": True},
        "MPO, 1-step targets, bfloat16 target pass, compiled losses",
    ),
}


def build(name: str, env: str, warm_up: int) -> OffPolicyAlgorithm:
    algo_class, kwargs, _ = CONFIGURATIONS[name]
    model = algo_class("MlpPolicy", env, seed=0, learning_starts=warm_up // 2, batch_size=256, **kwargs)
    model.learn(warm_up)
    model.train(10, model.batch_size)
    return model


def measure(
    env: str, names: list[str], rounds: int, updates: int, warm_up: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """
    :return: Milliseconds per gradient step of each configuration, one value per round, and the seconds each took to
        set up (collecting the warm-up steps, its first updates and, for a compiled update, compiling it)
    """
    models, setup_seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        models[name] = build(name, env, warm_up)
        setup_seconds[name] = time.perf_counter() - start
    milliseconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.train(updates, model.batch_size)
            milliseconds[name].append(1e3 * (time.perf_counter() - start) / updates)
    return milliseconds, setup_seconds


def write_page(results_dir: Path, page: Path, reading: Path = READING) -> None:
    """Regenerate the page from every stored measurement, with the reading (when there is one) first."""
    lines = [
        "# The cost of a gradient step",
        "",
        "Generated by `python -m benchmarks.update_cost --page` from `benchmarks/results/update_cost/`. One process and",
        "one torch thread; the algorithms take turns, so all see the same machine state. Every algorithm has (256, 256)",
        "networks and batch 256. Ratios are per round (same machine state), then the median over rounds. Set-up is",
        "collecting the warm-up steps and the first updates, and compiling a compiled update (where recorded). Newest",
        "commit first.",
        "",
    ]
    if reading.is_file():
        lines += ["## Reading", "", reading.read_text().strip(), ""]
    records = [json.loads(path.read_text()) for path in results_dir.glob("*.json")]
    for record in sorted(records, key=lambda record: (record["env"], -commit_time(record["commit"]))):
        sac = np.array(record["milliseconds"]["sac"])
        lines += [
            f"## {record['env']}, commit {record['commit']}",
            "",
            f"{record['machine']}, torch {record['torch']}; {record['rounds']} rounds of {record['updates']} gradient steps; "
            f"1-minute load average {record['load_average'][0]:.1f} before and {record['load_average'][1]:.1f} after "
            "(other processes shared the cores when it is above 1).",
            "",
            "| configuration | ms per gradient step (median) | range | / SAC (median of rounds) | set-up (s) |",
            "|---|---|---|---|---|",
        ]
        setup_seconds = record.get("setup_seconds", {})
        for name, values in record["milliseconds"].items():
            ratio = float(np.median(np.array(values) / sac))
            setup = f"{setup_seconds[name]:.0f}" if name in setup_seconds else "—"
            lines.append(
                f"| {record['labels'][name]} | {np.median(values):.2f} | {min(values):.2f}-{max(values):.2f} | {ratio:.2f} "
                f"| {setup} |"
            )
        lines.append("")
    page.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--algos", nargs="+", default=list(CONFIGURATIONS), choices=list(CONFIGURATIONS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--warm-up", type=int, default=2000)
    parser.add_argument("--page", action="store_true", help="only regenerate the page")
    args = parser.parse_args()
    if not args.page:
        if "sac" not in args.algos:
            parser.error("--algos must include sac, the reference")
        th.set_num_threads(1)
        load_before = os.getloadavg()[0]
        code = stamp()  # the code as it is when the measurement starts
        milliseconds, setup_seconds = measure(args.env, args.algos, args.rounds, args.updates, args.warm_up)
        record = {
            "env": args.env,
            **code,
            "load_average": [load_before, os.getloadavg()[0]],  # the machine's other work, before and after
            "rounds": args.rounds,
            "updates": args.updates,
            "labels": {name: CONFIGURATIONS[name][2] for name in args.algos},
            "milliseconds": milliseconds,
            "setup_seconds": setup_seconds,
        }
        write_result(RESULTS / f"{args.env}_{record['commit']}.json", record)
    write_page(RESULTS, PAGE)
    print(PAGE.read_text())


if __name__ == "__main__":
    main()
