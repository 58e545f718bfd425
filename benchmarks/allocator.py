"""
Speed of a benchmark worker under glibc's default heap thresholds and under the fixed ones the runner sets
(:func:`benchmarks.memory.keep_freed_blocks_in_heap`), each measurement in a fresh process, the two settings
alternating so that both see the same machine. Writes benchmarks/results/allocator/<algo>_<env>_<commit>.json and
prints a table.

    python -m benchmarks.allocator --algo qrdqn --env LunarLander-v3 --threads 2 --updates 512 --repeats 3

Each process builds the model as a suite run does (rl_zoo3's experiment manager, RL Zoo's settings; sb3-mpo's for
MPO), fills its replay buffer up to ``learning_starts``, then times ``train()`` over ``--updates`` gradient steps and
reads that stretch's minor page faults and kernel CPU time (``getrusage``).
"""

import argparse
import contextlib
import io
import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from benchmarks.results import write_result
from benchmarks.stamp import git_commit, machine
from benchmarks.suite import RESULTS_DIR, Job
from benchmarks.zoo import zoo_experiment

RESULTS = RESULTS_DIR / "allocator"
SETTINGS = ("glibc_default", "kept_in_heap")


def measure(algo: str, env: str, threads: int, updates: int, setting: str) -> dict[str, float]:
    """
    One measurement, in the calling (fresh) process.

    :return: Gradient steps per second, minor page faults per gradient step, and the kernel's share of the CPU time
    """
    import torch as th
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    from benchmarks.memory import keep_freed_blocks_in_heap

    th.set_num_threads(threads)
    if setting == "kept_in_heap" and not keep_freed_blocks_in_heap():
        raise RuntimeError("glibc's mallopt is not available here: nothing to compare")
    with tempfile.TemporaryDirectory() as log_folder:
        manager, _ = zoo_experiment(Job("allocator", algo, env, 0, 1, 1, 1), log_folder)
        with contextlib.redirect_stdout(io.StringIO()):  # rl_zoo3 prints its set-up
            model, _ = manager.setup_experiment()  # type: ignore[misc]
        if not isinstance(model, OffPolicyAlgorithm):
            raise ValueError(f"--algo must be an off-policy algorithm (it times train() on a filled buffer), got {algo}")
        if setting == "glibc_default" and hasattr(model, "keep_freed_memory_in_heap"):
            # MPO keeps freed blocks in its heap by itself when it learns: off, for glibc's own behaviour (a fresh process)
            setattr(type(model), "keep_freed_memory_in_heap", False)  # noqa: B010
        model.learn(max(model.learning_starts, model.batch_size))
        model.train(gradient_steps=8, batch_size=model.batch_size)  # warm-up
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        model.train(gradient_steps=updates, batch_size=model.batch_size)
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    user, kernel = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "gradient_steps_per_second": updates / seconds,
        "minor_faults_per_update": (after.ru_minflt - before.ru_minflt) / updates,
        "kernel_cpu_share": kernel / (user + kernel),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="qrdqn", help="an off-policy algorithm of the benchmark runner")
    parser.add_argument("--env", default="LunarLander-v3")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, as the runner's --threads")
    parser.add_argument("--updates", type=int, default=512, help="timed gradient steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per setting")
    args = parser.parse_args()

    figures: dict[str, dict[str, list[float]]] = {setting: {} for setting in SETTINGS}
    context = multiprocessing.get_context("spawn")
    for _ in range(args.repeats):
        for setting in SETTINGS:
            with ProcessPoolExecutor(1, mp_context=context) as pool:  # a fresh process: the settings are process-wide
                measured = pool.submit(measure, args.algo, args.env, args.threads, args.updates, setting).result()
            for key, value in measured.items():
                figures[setting].setdefault(key, []).append(value)

    medians = {setting: {key: float(np.median(values)) for key, values in fig.items()} for setting, fig in figures.items()}
    print(f"{args.algo} on {args.env}: median over {args.repeats} alternating repeats, {args.threads} torch thread(s)")
    print(f"{'setting':14} {'grad steps/s':>13} {'faults/update':>14} {'kernel CPU':>11}")
    for setting, median in medians.items():
        print(
            f"{setting:14} {median['gradient_steps_per_second']:>13.1f} {median['minor_faults_per_update']:>14.0f}"
            f" {median['kernel_cpu_share']:>11.1%}"
        )
    speedup = medians["kept_in_heap"]["gradient_steps_per_second"] / medians["glibc_default"]["gradient_steps_per_second"]
    print(f"gradient steps/s kept in heap / glibc default: {speedup:.2f}")
    commit = git_commit()
    record: dict[str, Any] = {
        "algo": args.algo,
        "env": args.env,
        "torch_threads": args.threads,
        "updates": args.updates,
        "commit": commit,
        "machine": machine(),
        "figures": figures,
        "medians": medians,
        "speedup": speedup,
    }
    write_result(RESULTS / f"{args.algo}_{args.env}_{commit}.json", record)


if __name__ == "__main__":
    main()
