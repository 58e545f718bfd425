"""
Speed of MPO vs SB3's SAC at the same network size and batch, on one core, alternating the two algorithms so that
both see the same machine state. MPO trains with its RL Zoo entry (sb3_mpo/hyperparams/mpo.yml), SAC with its
constructor's defaults. Writes benchmarks/results/speed_quiet/<env>_<commit>.json and prints a table; the record keeps
the type MPO's target pass ran in and the machine's load average over the measurement, which says how quiet it was.

    python -m benchmarks.speed --env Pendulum-v1 --steps 2000 --repeats 3

Env steps/s times ``learn()`` after the warm-up (collection + one update per step, as configured); gradient steps/s
times ``train()`` alone on a filled buffer.
"""

import argparse
import os
import time

import numpy as np
import torch as th
from stable_baselines3 import SAC

from benchmarks.report import QUIET_SPEED_FOLDER, SPEED_KEYS
from benchmarks.results import stored_form, write_result
from benchmarks.stamp import stamp
from benchmarks.suite import RESULTS_DIR
from sb3_mpo import MPO
from sb3_mpo.common.hyperparams import environment_settings, load_entry, zoo_entry_to_kwargs
from sb3_mpo.common.precision import dtype_name

RESULTS = RESULTS_DIR / QUIET_SPEED_FOLDER


def measure(model, steps: int, updates: int) -> tuple[float, float]:
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    env_steps_per_second = steps / (time.perf_counter() - start)
    start = time.perf_counter()
    model.train(updates, model.batch_size)
    return env_steps_per_second, updates / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=2000, help="timed env steps per repeat")
    parser.add_argument("--updates", type=int, default=300, help="timed gradient steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    th.set_num_threads(1)
    code = stamp()  # the code as it is when the measurement starts

    # Same networks (256-256) and batch (256) for both; learning rates do not affect speed
    entry = load_entry(args.env)
    around = environment_settings(entry)
    if around:
        raise SystemExit(f"{args.env}: its entry sets {around}, which this plain-environment timing would not apply")
    mpo = MPO("MlpPolicy", args.env, seed=0, **zoo_entry_to_kwargs(entry))
    models = {"mpo": mpo, "sac": SAC("MlpPolicy", args.env, seed=0)}
    for model in models.values():
        model.learn(1000)  # past learning_starts, buffers warm
    figures: dict[str, dict[str, list[float]]] = {name: {key: [] for key in SPEED_KEYS} for name in models}
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for name, model in models.items():
            for key, value in zip(SPEED_KEYS, measure(model, args.steps, args.updates), strict=True):
                figures[name][key].append(value)
        loads.append(os.getloadavg()[0])

    medians = {name: {key: float(np.median(values)) for key, values in fig.items()} for name, fig in figures.items()}
    print(f"{args.env}: median over {args.repeats} alternating repeats, one torch thread")
    print(f"{'algo':5} {'env steps/s':>12} {'grad steps/s':>13}")
    for name, median in medians.items():
        print(f"{name:5} {median['env_steps_per_second']:>12.1f} {median['gradient_steps_per_second']:>13.1f}")
    ratio = medians["sac"]["env_steps_per_second"] / medians["mpo"]["env_steps_per_second"]
    print(f"MPO wall-clock per env step / SAC's: {ratio:.2f} (MPO's target pass in {dtype_name(mpo.target_dtype)})")
    print(f"1-minute load average: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    record = {
        "env": args.env,
        **code,
        "figures": figures,
        "medians": medians,
        "mpo_over_sac_wall_clock_per_env_step": ratio,
        "mpo_target_dtype": dtype_name(mpo.target_dtype),
        # the entry's settings as result files store them, so that a page says whether its MPO runs trained this way
        "mpo_hyperparams": stored_form(entry),
        "load_average": [min(loads), max(loads)],
    }
    write_result(RESULTS / f"{args.env}_{record['commit']}.json", record)


if __name__ == "__main__":
    main()
