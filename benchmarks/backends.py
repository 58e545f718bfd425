"""
Execution backends: where the jobs of a suite run. Both hand each finished record back to the driver, which writes the
result file, so results land in one store whichever backend ran them.

- ``run_local``: worker processes on this machine (default: one per core at a time), a fresh process per job.
- ``run_ray``: tasks on a Ray cluster (or a local Ray instance), one CPU each, scheduled by Ray itself.
"""

import collections
import contextlib
import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.results import write_result
from benchmarks.stamp import git_commit
from benchmarks.suite import Job
from benchmarks.training import run_job_safely

#: prctl's request that the kernel signal the calling process when its parent dies (Linux, <sys/prctl.h>)
PR_SET_PDEATHSIG = 1
#: How often the local driver checks that its workers still live, in seconds, when none has sent anything
POLL_SECONDS = 1.0
#: How long a local worker may take to exit once it has sent its job's outcome, in seconds, before it is terminated
EXIT_SECONDS = 60.0
JobT = TypeVar("JobT")
Outcome = tuple[JobT, dict[str, Any] | None, str]
#: A picklable module-level function that runs one job and returns (job, its record or None, the error's traceback)
Worker = Callable[[JobT], Outcome]


def run_local(jobs: list[JobT], workers: int | None = None, worker: Worker = run_job_safely) -> Iterator[Outcome]:
    """
    Run jobs in local worker processes, yielding each outcome as it finishes. Each job gets a fresh interpreter
    (``spawn``), so that its peak memory and torch's state are its own, and at most ``workers`` run at once. A worker
    that ends without handing back its outcome (killed, out of memory, a crash in native code) is its job's failure,
    reported with the exit code, and the other jobs go on: the driver never waits on a process that is gone.

    :param jobs: The jobs to run
    :param workers: Number of parallel processes (default: one per core); each uses the torch threads its ``worker``
        sets (one by default, ``--threads`` in the command line)
    :param worker: The function that runs one job (default: a suite's training run)
    """
    workers = workers or os.cpu_count() or 1
    context = mp.get_context("spawn")
    waiting = collections.deque(jobs)
    running: dict[Connection, tuple[JobT, BaseProcess]] = {}
    with _exit_on_sigterm():
        try:
            while waiting or running:
                while waiting and len(running) < workers:
                    job = waiting.popleft()
                    receiver, sender = context.Pipe(duplex=False)
                    process: BaseProcess = context.Process(target=_run_in_worker, args=(worker, job, sender, os.getpid()))
                    process.start()
                    sender.close()  # the worker holds the only writing end: its exit ends the pipe
                    running[receiver] = (job, process)
                # A worker's exit code is polled too: a process it forked may hold its end of the pipe open
                connection.wait(list(running), timeout=POLL_SECONDS)
                for receiver, (job, process) in list(running.items()):
                    outcome = _outcome(receiver, job, process)
                    if outcome is not None:
                        del running[receiver]
                        receiver.close()
                        yield outcome
        finally:
            for receiver, (_, process) in running.items():
                process.terminate()
                process.join()
                receiver.close()


def _run_in_worker(worker: Worker, job: JobT, sender: Connection, parent: int) -> None:
    """A worker process's whole life: run one job and send its outcome to the driver (an exception as its failure)."""
    stop_with_parent(parent)
    try:
        outcome = worker(job)
    except Exception:
        outcome = (job, None, traceback.format_exc())
    sender.send(outcome)
    sender.close()


def _outcome(receiver: Connection, job: JobT, process: BaseProcess) -> Outcome | None:
    """
    A running job's outcome once its worker has sent it or has ended without sending it; ``None`` while it runs. The
    worker is given :data:`EXIT_SECONDS` to exit after its pipe speaks, then terminated (a thread the job left behind).
    """
    sent: Outcome | None = None
    if receiver.poll():
        try:
            sent = receiver.recv()
        except EOFError:  # the pipe ended without a whole outcome: the worker is gone
            pass
    elif process.exitcode is None:
        return None
    process.join(EXIT_SECONDS)
    if process.exitcode is None:
        process.terminate()
        process.join()
    return sent if sent is not None else (job, None, _lost(process))


def _lost(process: BaseProcess) -> str:
    """The failure of a job whose worker ended without handing back its outcome."""
    code = process.exitcode
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
    return f"its worker process (pid {process.pid}) {how} before handing back the job's outcome"


def stop_with_parent(parent: int) -> None:
    """
    The first thing a local worker does: ask the kernel to send it SIGTERM when the driver that started it dies,
    whatever killed it. The driver stops its workers on SIGTERM itself (:func:`_exit_on_sigterm`), but nothing it runs
    survives SIGKILL, after which its workers would train on for nobody: their results lost, their checkpoints saved for
    a run that no longer waits for them. The kernel ties the request to the driver's thread that started the worker,
    which is the one that runs :func:`run_local` (it starts every worker itself). Linux only (``prctl``); elsewhere this
    does nothing.

    :param parent: The driver's process id: a worker whose driver died before the request stops at once
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """
    Turn SIGTERM into ``SystemExit`` while local workers run, so that stopping the driver (``kill``) also stops its
    workers (:func:`run_local` terminates those still running as it exits) instead of leaving them to train for nobody.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_ray(
    jobs: list[JobT], address: str, runtime_env: dict[str, Any] | None = None, worker: Worker = run_job_safely
) -> Iterator[Outcome]:
    """
    Run jobs as Ray tasks, yielding each outcome as it finishes. Every node needs sb3-mpo installed with the
    ``benchmarks`` extra (or a ``runtime_env`` that installs it); Ray ships this ``benchmarks`` package to the tasks
    itself (:func:`ray_runtime_env`), since it is not part of the installed library: a caller that has already called
    ``ray.init`` passes that runtime environment there.

    :param jobs: The jobs to run
    :param address: A Ray cluster's address (``"auto"``, ``"ray://head:10001"``, ...) or ``"local"`` to start a
        Ray instance on this machine
    :param runtime_env: Ray's runtime environment for the job, added to :func:`ray_runtime_env`'s (used when Ray is
        started here)
    :param worker: The function that runs one job (default: a suite's training run)
    """
    try:
        import ray
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('The Ray backend needs Ray: pip install "ray[default]"') from error
    if not jobs:
        return
    started_here = not ray.is_initialized()
    if started_here:
        job_env = {**ray_runtime_env(), **(runtime_env or {})}
        ray.init(address=None if address == "local" else address, runtime_env=job_env, include_dashboard=False)
    try:
        # One CPU per task, and a fresh worker process per task (max_calls=1) as in the local backend
        remote: Any = ray.remote(num_cpus=1, max_calls=1)(_apply)  # Ray wants a plain function: the worker may be a partial
        pending = [remote.remote(worker, job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()


def ray_runtime_env() -> dict[str, Any]:
    """Ray's runtime environment that ships this package (without its stored results) to the nodes running the tasks."""
    return {"py_modules": [str(Path(__file__).resolve().parent)], "excludes": ["results/", "__pycache__/"]}


def _apply(worker: Worker, job: JobT) -> Outcome:
    return worker(job)


def run_jobs(
    jobs: list[JobT],
    backend: str,
    workers: int | None = None,
    ray_address: str | None = None,
    worker: Worker = run_job_safely,
) -> Iterable[Outcome]:
    """Dispatch to :func:`run_local` (``backend="local"``) or :func:`run_ray` (``backend="ray"``)."""
    backends: dict[str, Callable[[], Iterable[Outcome]]] = {
        "local": lambda: run_local(jobs, workers, worker),
        "ray": lambda: run_ray(jobs, ray_address or "local", worker=worker),
    }
    if backend not in backends:
        raise ValueError(f"backend={backend!r} is unknown, expected one of {sorted(backends)}")
    return backends[backend]()


def keep_final_state(job: Job, checkpoints: Path) -> None:
    """
    Keep a finished job's checkpoint, which its worker saved at the end of the run, as its final state (replacing an
    older one); a job whose worker saved none (an exploration learner) keeps nothing.

    :param job: The job
    :param checkpoints: The folder of checkpoints
    """
    final, folder = job.final_path(checkpoints), job.checkpoint_path(checkpoints)
    shutil.rmtree(final, ignore_errors=True)
    if folder.exists():
        folder.rename(final)


def run_and_store(
    jobs: list[Any],
    results_dir: Path,
    describe: Callable[[dict[str, Any]], str],
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    worker: Worker = run_job_safely,
    checkpoints: Path | None = None,
    keep_final: bool = False,
) -> int:
    """
    Run jobs (each with a ``name`` and a ``result_path(results_dir)``) on a backend and store each finished record
    as its job's result file, stamped with the checkout's commit unless the worker recorded its own; a failed job prints
    its traceback and the others go on.

    :param describe: One line about a finished record, printed after its name
    :param checkpoints: The workers' folder of mid-run checkpoints: a job's checkpoint
        (``job.checkpoint_path(checkpoints)``) is removed once its result file is written
    :param keep_final: Keep it instead as the job's final state (``job.final_path(checkpoints)``, replacing an older
        one): the workers saved the finished runs there for a longer run to continue. Without it, a final state kept
        by an earlier run of the job is removed too, as it no longer belongs to the stored result
    :return: The number of failed jobs
    """
    commit, failures = git_commit(), 0
    for job, result, error in run_jobs(jobs, backend, workers, ray_address, worker):
        if result is None:
            failures += 1
            print(f"FAILED {job.name}:\n{error}", file=sys.stderr, flush=True)
            continue
        if result.get("commit", "unknown") == "unknown":
            result["commit"] = commit
        write_result(job.result_path(results_dir), result)
        if checkpoints is not None and keep_final:
            keep_final_state(job, checkpoints)
        elif checkpoints is not None:
            shutil.rmtree(job.checkpoint_path(checkpoints), ignore_errors=True)
            shutil.rmtree(job.final_path(checkpoints), ignore_errors=True)  # an earlier run's, no longer this result's
        print(f"done {job.name}: {describe(result)}", flush=True)
    return failures
