"""
Train one benchmark job and describe it in a result record.

A job runs in a fresh worker process (local backend or Ray task) and returns its record; the driver writes it
(:mod:`benchmarks.results`), so results from a cluster land in the driver's store.
"""

import contextlib
import io
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.results import SCHEMA, stored_form
from benchmarks.stamp import git_commit, library_versions, machine
from benchmarks.suite import Job
from benchmarks.zoo import zoo_experiment

#: What a part of a run (a leg: from its start or a resume to its end or next save) records of where it trained
LEG_KEYS = ("commit", "torch_threads", "machine")


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


def target_pass_dtype(model: Any) -> str | None:
    """
    The type MPO's target pass computed in (``target_precision`` resolved on the machine that ran it, so that an
    ``"auto"`` run says what it chose); ``None`` for other algorithms.
    """
    from sb3_mpo import MPO
    from sb3_mpo.common.precision import dtype_name

    return dtype_name(model.target_dtype) if isinstance(model, MPO) else None


def run_job(
    job: Job,
    checkpoints: Path | None = None,
    checkpoint_minutes: float = 10.0,
    torch_threads: int = 1,
    keep_final: bool = False,
) -> dict[str, Any]:
    """
    Train ``job.algo`` on ``job.env`` with RL Zoo's settings (rl_zoo3's experiment manager, MPO registered) and
    evaluate it deterministically every ``job.eval_freq`` steps on a separate environment (SB3's ``EvalCallback``,
    which also syncs ``VecNormalize`` statistics). With ``checkpoints``, the run saves itself there at a rollout
    boundary every ``checkpoint_minutes`` and, when it finds a checkpoint of the same job, resumes from it
    (see :mod:`benchmarks.checkpoints`); a checkpoint that continues a shorter run's final state is taken the same way.

    :param job: The run
    :param checkpoints: Folder of the mid-run checkpoints (the job's own is :meth:`Job.checkpoint_path`); None: none
    :param checkpoint_minutes: Minimum wall-clock between two checkpoints (0: at every rollout)
    :param torch_threads: Threads torch may use in this worker (workers x threads should not exceed the cores);
        recorded in the result, since it changes the speed figures (a resumed run records its last leg's there, and
        each resume its own)
    :param keep_final: Save the finished run's state in its checkpoint folder too (the caller keeps it as the final
        state, :meth:`Job.final_path`), for a longer run of the same training to continue
    :return: Its result record (see :data:`REQUIRED_KEYS`); the caller writes it (and removes the checkpoint, or keeps it
        as the final state)
    """
    import torch as th
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    from benchmarks.checkpoints import (
        PairedEvaluation,
        RunCheckpoint,
        TimedEvalCallback,
        WarningRecord,
        read_state,
        recover_interrupted_save,
        restore,
        stale_checkpoint,
    )
    from benchmarks.memory import ReleaseFreeMemory, keep_freed_blocks_in_heap

    if not isinstance(torch_threads, int) or torch_threads < 1:
        raise ValueError(f"torch_threads must be a positive integer, got {torch_threads!r}")
    th.set_num_threads(torch_threads)
    keep_freed_blocks_in_heap()
    commit = git_commit()  # the code this worker process imported, whatever the checkout becomes while it trains
    checkpoint_folder = job.checkpoint_path(checkpoints) if checkpoints is not None else None
    with tempfile.TemporaryDirectory() as log_folder:
        manager, hyperparams_source = zoo_experiment(job, log_folder)
        # the warnings of building the model and the envs (and of loading a checkpoint), kept at the step training starts
        set_up = WarningRecord(lambda: 0)
        # rl_zoo3 prints its set-up; the runner prints one line per job
        with contextlib.redirect_stdout(io.StringIO()), set_up.recording():
            model, saved_hyperparams = manager.setup_experiment()  # type: ignore[misc]
            eval_env = manager.create_envs(n_envs=1, eval_env=True)
        settings = stored_form(saved_hyperparams)
        state = None
        if checkpoint_folder is not None:
            recover_interrupted_save(checkpoint_folder)
            state = read_state(checkpoint_folder, job, settings)
            stale = stale_checkpoint(checkpoint_folder, job, settings) if state is None else None
            if stale is not None:
                print(f"{job.name}: its checkpoint was saved {stale.how}, it starts over: {stale.changes}", file=sys.stderr)
        eval_env.seed(job.eval_seed)
        paired = None
        if job.paired_evaluation is not None and PairedEvaluation.applies_to(model):
            with contextlib.redirect_stdout(io.StringIO()), set_up.recording():
                paired_env = manager.create_envs(n_envs=1, eval_env=True)
            paired_env.seed(job.eval_seed)  # its episodes start where the run's evaluation episodes start
            paired = PairedEvaluation(paired_env, job.paired_evaluation)
        elif job.paired_evaluation is not None and job.zoo_algo == "mpo":
            print(f"{job.name}: no {job.paired_evaluation} evaluation, its actor does not clip a Gaussian", file=sys.stderr)
        n_envs = model.get_env().num_envs  # type: ignore[union-attr]
        evaluation = TimedEvalCallback(
            eval_env,
            n_eval_episodes=job.eval_episodes,
            eval_freq=max(job.eval_freq // n_envs, 1),
            log_path=log_folder,
            deterministic=True,
            verbose=0,
            paired=paired,
        )
        callbacks = [*manager.callbacks, evaluation, ReleaseFreeMemory()]
        continued = state.get("continued_from") if state else None
        leg = {"commit": commit, "torch_threads": torch_threads, "machine": machine()}
        if state is not None:
            assert checkpoint_folder is not None
            with set_up.recording():
                model = restore(model, checkpoint_folder, state, evaluation)
            # a continuation is recorded as such; a finished run's final state whose result was never stored (its
            # driver stopped before it could) leaves nothing to train, and nothing was resumed
            finished = state.get("final", False) and model.num_timesteps >= job.steps
            if not finished and (not continued or continued["step"] != model.num_timesteps):
                # the leg that starts here, and the one before it, which the checkpoint recorded (its speed's part of
                # the result's is theirs: the speed table keeps runs whose legs differ apart)
                before = {key: state[key] for key in LEG_KEYS if key in state}
                state["resumes"].append({"step": int(model.num_timesteps), **leg, "before": before})
        for warning in set_up.warnings:  # a resumed run's set-up gives its first leg's again: kept once
            evaluation.warning_record.keep(warning["category"], warning["message"], int(model.num_timesteps))
        checkpoint = None
        if checkpoint_folder is not None:
            checkpoint = RunCheckpoint(checkpoint_folder, job, evaluation, checkpoint_minutes * 60, state, settings, leg)
            callbacks.append(checkpoint)
        start = time.perf_counter()
        with evaluation.warning_record.recording():
            model.learn(job.steps - model.num_timesteps, callback=callbacks, reset_num_timesteps=state is None)
            evaluation.evaluate_final(job.steps)
        # The clock stops after that evaluation, whose time eval_seconds counts, so that none of it comes off training
        total_seconds = (state["elapsed_seconds"] if state else 0.0) + time.perf_counter() - start
        save_seconds = checkpoint.save_seconds if checkpoint is not None else 0.0
        if keep_final and checkpoint is not None:
            checkpoint.save(final=True)  # not in this run's timings: the final state is for a longer run
        model.get_env().close()  # type: ignore[union-attr]
        eval_env.close()
        if paired is not None:
            paired.env.close()

    train_seconds = total_seconds - evaluation.eval_seconds - save_seconds
    curve = evaluation.result_curve()
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
        # Each distinct warning given while building and training the model (MPO's health checks, a library's), with the env
        # step of its first (where training started for the set-up's)
        "warnings": evaluation.warning_record.warnings,
        # The shorter run of the same training whose final state this one started from (see run --continue-from)
        **({"continued_from": continued} if continued else {}),
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
        "target_dtype": target_pass_dtype(model),
        "hyperparams": settings,
        "hyperparams_source": hyperparams_source,
        "overrides": {key: repr(value) for key, value in job.hyperparams.items()},
        "versions": library_versions(),
        "machine": machine(),
        # "unknown" where the worker has no git checkout (a Ray node with an installed package): the driver fills it in
        "commit": commit,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_job_safely(
    job: Job,
    checkpoints: Path | None = None,
    checkpoint_minutes: float = 10.0,
    torch_threads: int = 1,
    keep_final: bool = False,
) -> tuple[Job, dict[str, Any] | None, str]:
    """
    :func:`run_job` (or, for a job of an exploration suite, :func:`benchmarks.exploration.run_exploration_job`, which
    keeps no checkpoint) for the backends: a failure comes back as its traceback instead of stopping the other jobs.
    """
    try:
        if job.kind == "exploration":
            from benchmarks.exploration import run_exploration_job

            return job, run_exploration_job(job, torch_threads), ""
        return job, run_job(job, checkpoints, checkpoint_minutes, torch_threads, keep_final), ""
    except Exception:
        return job, None, traceback.format_exc()
