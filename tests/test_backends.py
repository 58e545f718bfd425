"""The local backend's worker processes: one fresh process per job, at most ``workers`` at once, a dead one reported."""

import os
import signal
import time
from typing import Any

from benchmarks.backends import run_local

#: How long the process a dying worker forks keeps the worker's end of the pipe open, in seconds
HOLD_SECONDS = 10.0


def die_or_return(job: int) -> tuple[int, dict[str, Any] | None, str]:
    """
    Job 1's worker is killed, job 2's raises, job 3's forks a process that outlives it and is killed, job 5's exits with
    code 3; the others return.
    """
    if job == 3 and os.fork() == 0:  # the child keeps the worker's end of the pipe open after the worker is gone
        time.sleep(HOLD_SECONDS)
        with open(os.environ["HOLD_MARKER"], "w") as marker:  # says that the child's time is up
            marker.write("done")
        os._exit(0)
    if job in (1, 3):
        os.kill(os.getpid(), signal.SIGKILL)
    if job == 2:
        raise RuntimeError("job 2 failed")
    if job == 5:
        os._exit(3)
    return job, {"pid": os.getpid()}, ""


def sleep_a_while(job: int) -> tuple[int, dict[str, Any], str]:
    """Hold the worker for a second and say when."""
    start = time.monotonic()
    time.sleep(1.0)
    return job, {"start": start, "end": time.monotonic(), "pid": os.getpid()}, ""


def test_a_worker_that_dies_is_its_jobs_failure_and_the_other_jobs_go_on(tmp_path, monkeypatch):
    marker = tmp_path / "held"
    monkeypatch.setenv("HOLD_MARKER", str(marker))
    outcomes = {job: (result, error) for job, result, error in run_local([0, 1, 2, 3, 4, 5], 2, die_or_return)}
    assert sorted(outcomes) == [0, 1, 2, 3, 4, 5]
    for job in (1, 3):  # job 3's driver cannot wait for the end of the pipe: a process the worker forked holds it
        result, error = outcomes[job]
        assert result is None and "was killed by signal 9 before handing back the job's outcome" in error, error
    result, error = outcomes[2]
    assert result is None and "RuntimeError: job 2 failed" in error
    result, error = outcomes[5]
    assert result is None and "exited with code 3 before handing back the job's outcome" in error, error
    assert outcomes[0][0] is not None and outcomes[4][0] is not None
    assert outcomes[0][0]["pid"] != outcomes[4][0]["pid"], "a fresh process per job"
    assert not marker.exists(), "the driver waited for the end of the pipe that the forked process held"


def test_at_most_the_given_number_of_workers_run_at_once():
    records = [result for _, result, _ in run_local(list(range(4)), 2, sleep_a_while)]
    assert len(records) == 4 and len({record["pid"] for record in records}) == 4
    for record in records:
        running = [other for other in records if other["start"] <= record["start"] < other["end"]]
        assert len(running) <= 2, running
