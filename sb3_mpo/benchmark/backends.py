"""
Execution backends: where the jobs of a suite run. Both hand each finished record back to the driver, which writes the
result file, so results land in one store whichever backend ran them.

- ``run_local``: a pool of worker processes on this machine (default: one per core), a fresh process per job.
- ``run_ray``: tasks on a Ray cluster (or a local Ray instance), one CPU each, scheduled by Ray itself.
"""

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sb3_mpo.benchmark.runner import run_job_safely
from sb3_mpo.benchmark.suite import Job

Outcome = tuple[Job, dict[str, Any] | None, str]


def run_local(jobs: list[Job], workers: int | None = None) -> Iterator[Outcome]:
    """
    Run jobs in local worker processes, yielding each outcome as it finishes.

    :param jobs: The jobs to run
    :param workers: Number of parallel processes (default: one per core); each job uses one torch thread
    """
    workers = workers or os.cpu_count() or 1
    if not jobs:
        return
    # spawn: a fresh interpreter per job (maxtasksperchild=1), so peak memory and torch's state are the job's own
    with mp.get_context("spawn").Pool(min(workers, len(jobs)), maxtasksperchild=1) as pool:
        yield from pool.imap_unordered(run_job_safely, jobs)


def run_ray(jobs: list[Job], address: str, runtime_env: dict[str, Any] | None = None) -> Iterator[Outcome]:
    """
    Run jobs as Ray tasks, yielding each outcome as it finishes. Every node needs sb3-mpo installed with the
    ``benchmarks`` extra (or pass a ``runtime_env`` that installs it).

    :param jobs: The jobs to run
    :param address: A Ray cluster's address (``"auto"``, ``"ray://head:10001"``, ...) or ``"local"`` to start a
        Ray instance on this machine
    :param runtime_env: Ray's runtime environment for the tasks
    """
    try:
        import ray
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError('The Ray backend needs Ray: pip install "ray[default]"') from error
    if not jobs:
        return
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=None if address == "local" else address, runtime_env=runtime_env, include_dashboard=False)
    try:
        # One CPU per task, and a fresh worker process per task (max_calls=1) as in the local pool
        remote = ray.remote(num_cpus=1, max_calls=1)(run_job_safely)
        pending = [remote.remote(job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()


def run_jobs(jobs: list[Job], backend: str, workers: int | None = None, ray_address: str | None = None) -> Iterable[Outcome]:
    """Dispatch to :func:`run_local` (``backend="local"``) or :func:`run_ray` (``backend="ray"``)."""
    backends: dict[str, Callable[[], Iterable[Outcome]]] = {
        "local": lambda: run_local(jobs, workers),
        "ray": lambda: run_ray(jobs, ray_address or "local"),
    }
    if backend not in backends:
        raise ValueError(f"backend={backend!r} is unknown, expected one of {sorted(backends)}")
    return backends[backend]()
