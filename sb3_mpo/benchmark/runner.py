"""
Train one benchmark job and describe it in a result record; read and write result files.

A job runs in a fresh worker process (local pool or Ray task) and returns its record; only the driver writes files,
atomically (write to a temporary file, then rename), so an interrupted suite never leaves a half-written result and
results from a cluster land in the driver's store.
"""

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sb3_mpo.benchmark.suite import Job

if TYPE_CHECKING:
    from sb3_mpo.zoo.exp_manager import MPOExperimentManager

#: Version of the result-file layout; files of another version are reported and not used
SCHEMA = 1
#: Keys every result file must have
REQUIRED_KEYS = (
    "schema",
    "suite",
    "algo",
    "env",
    "seed",
    "steps",
    "curve",
    "final_return",
    "train_seconds",
    "env_steps_per_second",
    "hyperparams",
    "versions",
    "commit",
    "machine",
)


class ResultError(ValueError):
    """A result file that cannot be used: unreadable, partial, of another schema, or not the job it claims to be."""


def load_result(path: Path, job: Job | None = None) -> dict[str, Any]:
    """
    Read and check one result file.

    :param path: The file
    :param job: When given, the file must describe this job
    :return: The result record
    :raises ResultError: naming the file and what is wrong with it
    """
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultError(f"{path}: unreadable ({error})") from error
    if not isinstance(result, dict):
        raise ResultError(f"{path}: not a result record")
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise ResultError(f"{path}: missing keys {missing}")
    if result["schema"] != SCHEMA:
        raise ResultError(f"{path}: schema {result['schema']}, expected {SCHEMA}")
    if not result["curve"] or result["curve"][-1]["step"] < result["steps"]:
        raise ResultError(f"{path}: the evaluation curve stops before the budget of {result['steps']} steps")
    if job is not None:
        claimed = tuple(result[key] for key in ("suite", "algo", "env", "seed", "steps"))
        expected = (job.suite, job.algo, job.env, job.seed, job.steps)
        if claimed != expected:
            raise ResultError(f"{path}: describes {claimed}, expected {expected}")
    return result


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a result file atomically: readers see the old file or the complete new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as file:
        json.dump(result, file, indent=1)
        tmp = Path(file.name)
    os.replace(tmp, path)


def git_commit() -> str:
    """The checkout's commit (``-dirty`` when it has uncommitted changes), or ``"unknown"`` outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


#: Installed distributions whose version can change a run's numbers besides the libraries imported below: RL Zoo
#: (wrappers, defaults) and the simulators (a MuJoCo release can change the physics)
OPTIONAL_DISTRIBUTIONS = ("rl_zoo3", "mujoco", "box2d", "ale-py")


def library_versions() -> dict[str, str]:
    """The versions of the libraries a run imports, and of the optional ones that are installed."""
    from importlib import metadata

    import gymnasium
    import sb3_contrib
    import stable_baselines3
    import torch

    import sb3_mpo

    versions = {
        "sb3_mpo": sb3_mpo.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "python": platform.python_version(),
    }
    for name in OPTIONAL_DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def critic_target(model: Any) -> str | None:
    """
    MPO's critic target as the model trained with it, constructor defaults included (``retrace (...)`` or
    ``n_step (...)``), so that a result file says so even where the settings leave it to the default; ``None`` for
    other algorithms.
    """
    from sb3_mpo import MPO

    if not isinstance(model, MPO):
        return None
    if model.q_target == "retrace":
        return f"retrace (segment_length={model.segment_length}, retrace_lambda={model.retrace_lambda})"
    return f"n_step (n_steps={model.n_steps})"


def machine() -> str:
    return f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cores {platform.system()}"


def stamp() -> dict[str, str]:
    """What a stored measurement must say about where it was made: the commit, the machine and torch's version."""
    import torch

    return {"commit": git_commit(), "machine": machine(), "torch": torch.__version__}


def zoo_hyperparams_file(algo: str) -> Path:
    """The RL Zoo hyperparameter file of an algorithm: sb3-mpo's for MPO, rl_zoo3's tuned file otherwise."""
    if algo == "mpo":
        from sb3_mpo.common.hyperparams import HYPERPARAMS_PATH

        return HYPERPARAMS_PATH
    import rl_zoo3

    return Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo}.yml"


def zoo_config(job: Job, folder: Path) -> tuple[str | None, str]:
    """
    The hyperparameter file rl_zoo3 should read for a job, and a description of where the settings come from.
    When the algorithm's file has no entry for the environment and the suite names a ``zoo_entry`` (e.g. the tuned
    Hopper-v4 entry for Hopper-v5), that entry is written to a file of its own under the environment's id.

    :return: The file to pass as rl_zoo3's ``config`` (None: the algorithm's own file), and the description
    """
    import yaml

    source = zoo_hyperparams_file(job.zoo_algo)
    label = f"{source.parent.parent.name}/{source.parent.name}/{source.name}"
    if job.zoo_entry is None:
        return None, label
    with open(source) as file:
        entries = yaml.safe_load(file)
    if job.env in entries:
        return None, label
    if job.zoo_entry not in entries:
        raise ValueError(f"{label} has no entry for {job.env} nor for zoo_entry={job.zoo_entry!r}")
    config = folder / f"{job.zoo_algo}_{job.env}.yml"
    config.write_text(yaml.safe_dump({job.env: entries[job.zoo_entry]}))
    return str(config), f"{label}, entry {job.zoo_entry}"


def zoo_experiment(job: Job, log_folder: str) -> tuple["MPOExperimentManager", str]:
    """
    rl_zoo3's experiment manager (with MPO registered) for a job: RL Zoo's wrappers, ``n_envs``, normalisation and
    settings, with the suite's overrides; its own evaluation is off (the runner evaluates).

    :param job: The run
    :param log_folder: Where rl_zoo3 may write (a temporary folder)
    :return: The manager, whose ``setup_experiment()`` builds the model, and where the settings come from
    """
    from sb3_mpo.zoo.exp_manager import MPOExperimentManager
    from sb3_mpo.zoo.registration import register

    register()
    config, hyperparams_source = zoo_config(job, Path(log_folder))
    args = argparse.Namespace(algo=job.zoo_algo, env=job.env, seed=job.seed, n_timesteps=job.steps, suite=job.suite)
    manager = MPOExperimentManager(
        args,
        job.zoo_algo,
        job.env,
        log_folder,
        n_timesteps=job.steps,
        eval_freq=-1,  # the runner evaluates instead
        hyperparams=job.hyperparams,
        seed=job.seed,
        verbose=0,
        device="cpu",
        config=config,
    )
    return manager, hyperparams_source


def run_job(
    job: Job, checkpoints: Path | None = None, checkpoint_minutes: float = 10.0, torch_threads: int = 1
) -> dict[str, Any]:
    """
    Train ``job.algo`` on ``job.env`` with RL Zoo's settings (rl_zoo3's experiment manager, MPO registered) and
    evaluate it deterministically every ``job.eval_freq`` steps on a separate environment (SB3's ``EvalCallback``,
    which also syncs ``VecNormalize`` statistics). With ``checkpoints``, the run saves itself there at a rollout
    boundary every ``checkpoint_minutes`` and, when it finds a checkpoint of the same job, resumes from it
    (see :mod:`sb3_mpo.benchmark.checkpoints`).

    :param job: The run
    :param checkpoints: Folder of the mid-run checkpoints (the job's own is :meth:`Job.checkpoint_path`); None: none
    :param checkpoint_minutes: Minimum wall-clock between two checkpoints (0: at every rollout)
    :param torch_threads: Threads torch may use in this worker (workers x threads should not exceed the cores);
        recorded in the result, since it changes the speed figures (a resumed run records its last leg's there, and
        each resume its own)
    :return: Its result record (see :data:`REQUIRED_KEYS`); the caller writes it (and removes the checkpoint)
    """
    import numpy as np
    import torch as th
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    from sb3_mpo.benchmark.checkpoints import RunCheckpoint, TimedEvalCallback, read_state, restore
    from sb3_mpo.benchmark.memory import ReleaseFreeMemory, keep_freed_blocks_in_heap

    if not isinstance(torch_threads, int) or torch_threads < 1:
        raise ValueError(f"torch_threads must be a positive integer, got {torch_threads!r}")
    th.set_num_threads(torch_threads)
    keep_freed_blocks_in_heap()
    commit = git_commit()  # the code this worker process imported, whatever the checkout becomes while it trains
    checkpoint_folder = job.checkpoint_path(checkpoints) if checkpoints is not None else None
    state = read_state(checkpoint_folder, job) if checkpoint_folder is not None else None
    with tempfile.TemporaryDirectory() as log_folder:
        manager, hyperparams_source = zoo_experiment(job, log_folder)
        with contextlib.redirect_stdout(io.StringIO()):  # rl_zoo3 prints its set-up; the runner prints one line per job
            model, saved_hyperparams = manager.setup_experiment()  # type: ignore[misc]
            eval_env = manager.create_envs(n_envs=1, eval_env=True)
        eval_env.seed(10_000 + job.seed)
        n_envs = model.get_env().num_envs  # type: ignore[union-attr]
        evaluation = TimedEvalCallback(
            eval_env,
            n_eval_episodes=job.eval_episodes,
            eval_freq=max(job.eval_freq // n_envs, 1),
            log_path=log_folder,
            deterministic=True,
            verbose=0,
        )
        callbacks = [*manager.callbacks, evaluation, ReleaseFreeMemory()]
        if state is not None:
            assert checkpoint_folder is not None
            model = restore(model, checkpoint_folder, state, evaluation)
            state["resumes"].append({"step": int(model.num_timesteps), "commit": commit, "torch_threads": torch_threads})
        checkpoint = None
        if checkpoint_folder is not None:
            checkpoint = RunCheckpoint(checkpoint_folder, job, evaluation, checkpoint_minutes * 60, state)
            callbacks.append(checkpoint)
        start = time.perf_counter()
        model.learn(job.steps - model.num_timesteps, callback=callbacks, reset_num_timesteps=state is None)
        total_seconds = (state["elapsed_seconds"] if state else 0.0) + time.perf_counter() - start
        if not evaluation.evaluations_timesteps or evaluation.evaluations_timesteps[-1] < job.steps:
            # The budget is not a multiple of eval_freq (or of the rollout): evaluate the final policy too
            evaluation.n_calls, evaluation.eval_freq = 0, 1
            evaluation.num_timesteps = model.num_timesteps
            evaluation.on_step()
        model.get_env().close()  # type: ignore[union-attr]
        eval_env.close()

    save_seconds = checkpoint.save_seconds if checkpoint is not None else 0.0
    train_seconds = total_seconds - evaluation.eval_seconds - save_seconds
    curve = [
        {
            "step": int(step),
            "mean": float(np.mean(returns)),
            "std": float(np.std(returns)),
            "returns": list(map(float, returns)),
        }
        for step, returns in zip(evaluation.evaluations_timesteps, evaluation.evaluations_results, strict=True)
    ]
    n_updates = int(getattr(model, "_n_updates", 0))
    off_policy = isinstance(model, OffPolicyAlgorithm)
    return {
        "schema": SCHEMA,
        "suite": job.suite,
        "algo": job.algo,
        "env": job.env,
        "seed": job.seed,
        "steps": job.steps,
        "eval_freq": job.eval_freq,
        "eval_episodes": job.eval_episodes,
        "curve": curve,
        "final_return": curve[-1]["mean"],
        "num_timesteps": int(model.num_timesteps),
        "train_seconds": train_seconds,
        "eval_seconds": evaluation.eval_seconds,
        "checkpoint_seconds": save_seconds,
        # Where the run was interrupted and resumed from a checkpoint (empty: trained in one go)
        "resumes": state["resumes"] if state else [],
        "env_steps_per_second": model.num_timesteps / train_seconds,
        # SB3's _n_updates counts gradient steps for off-policy algorithms, but epochs or iterations for on-policy ones
        "n_updates": n_updates,
        "gradient_steps_per_second": n_updates / train_seconds if off_policy else None,
        "torch_threads": torch_threads,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # The network and batch the run actually used (defaults included), for the speed table
        "net_arch": repr(getattr(model.policy, "net_arch", None)),
        "batch_size": getattr(model, "batch_size", None),
        "critic_target": critic_target(model),
        "hyperparams": {key: repr(value) for key, value in saved_hyperparams.items() if key != "n_timesteps"},
        "hyperparams_source": hyperparams_source,
        "overrides": {key: repr(value) for key, value in job.hyperparams.items()},
        "versions": library_versions(),
        "machine": machine(),
        # "unknown" where the worker has no git checkout (a Ray node with an installed package): the driver fills it in
        "commit": commit,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_job_safely(
    job: Job, checkpoints: Path | None = None, checkpoint_minutes: float = 10.0, torch_threads: int = 1
) -> tuple[Job, dict[str, Any] | None, str]:
    """:func:`run_job` for a worker pool: a failure comes back as its traceback instead of stopping the other jobs."""
    try:
        return job, run_job(job, checkpoints, checkpoint_minutes, torch_threads), ""
    except Exception:
        return job, None, traceback.format_exc()
