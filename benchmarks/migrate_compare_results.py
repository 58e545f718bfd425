"""
One-off conversion of the result files written by the retired ``benchmarks/compare.py`` (one folder per tag,
``<algo>_<env>_seed<k>.json``) into the suite layout of ``python -m sb3_mpo.benchmark`` (schema 1), so that one
report generator serves every page. The numbers are copied unchanged; each converted file names its original.

    python benchmarks/migrate_compare_results.py
"""

import json
import subprocess

from sb3_mpo.benchmark.runner import SCHEMA, load_result, write_result
from sb3_mpo.benchmark.suite import RESULTS_DIR, load_suite

#: (suite, algorithm in the suite, environment) -> compare.py tag whose runs it is
SOURCES = {
    ("pendulum", "mpo", "Pendulum-v1"): "pendulum",
    ("pendulum", "sac", "Pendulum-v1"): "pendulum",
    ("action_bounding", "mpo_clip", "Pendulum-v1"): "pendulum",
    ("action_bounding", "mpo_tanh", "Pendulum-v1"): "bounding_pendulum_tanh",
    ("action_bounding", "mpo_clip", "Hopper-v5"): "bounding_hopper_clip",
    ("action_bounding", "mpo_tanh", "Hopper-v5"): "bounding_hopper_tanh",
    ("critic_targets", "mpo_5step", "Pendulum-v1"): "pendulum",
    ("critic_targets", "mpo_1step", "Pendulum-v1"): "critic_pendulum_td1",
    ("critic_targets", "mpo_retrace", "Pendulum-v1"): "critic_pendulum_retrace",
}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    head = _git("rev-parse", "--short", "HEAD")
    for suite_name in dict.fromkeys(suite for suite, _, _ in SOURCES):
        for job in load_suite(suite_name).jobs:
            tag = SOURCES.get((job.suite, job.algo, job.env))
            if tag is None:
                continue
            source = RESULTS_DIR / tag / f"{job.zoo_algo}_{job.env}_seed{job.seed}.json"
            old = json.loads(source.read_text())
            assert (old["algo"], old["env"], old["seed"], old["steps"]) == (job.zoo_algo, job.env, job.seed, job.steps), source
            steps = [point["step"] for point in old["curve"]]
            assert steps == list(range(job.eval_freq, job.steps + 1, job.eval_freq)), (source, steps)
            relative = source.relative_to(RESULTS_DIR.parent.parent)
            record = {
                "schema": SCHEMA,
                "suite": job.suite,
                "algo": job.algo,
                "env": job.env,
                "seed": job.seed,
                "steps": job.steps,
                "eval_freq": job.eval_freq,
                "eval_episodes": job.eval_episodes,
                "curve": old["curve"],
                "final_return": old["final_return"],
                "num_timesteps": job.steps,
                "train_seconds": old["train_seconds"],
                "env_steps_per_second": old["env_steps_per_second"],
                "n_updates": round(old["gradient_steps_per_second"] * old["train_seconds"]),
                "gradient_steps_per_second": old["gradient_steps_per_second"],
                "peak_rss_mib": old["peak_rss_mib"],
                "hyperparams": old["hyperparams"],
                "hyperparams_source": old["hyperparams_source"],
                "overrides": {key: repr(value) for key, value in job.hyperparams.items()},
                "versions": old["versions"],
                "machine": old["machine"],
                "commit": old["commit"],
                "finished": _git("log", "-1", "--diff-filter=A", "--format=%aI", "--", str(relative)),
                "migrated_from": f"{relative} at commit {head}, written by benchmarks/compare.py (retired)",
            }
            path = job.result_path(RESULTS_DIR)
            write_result(path, record)
            load_result(path, job)
            print(f"{relative} -> {path.relative_to(RESULTS_DIR.parent.parent)}")


if __name__ == "__main__":
    main()
