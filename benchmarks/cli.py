"""
``python -m benchmarks COMMAND SUITE``: run a benchmark suite, show what is left of it, or report on it.

    python -m benchmarks run quick                      # local processes, one per core; resumes
    python -m benchmarks run full --ray-address auto    # on a Ray cluster
    python -m benchmarks run discrete --workers 1 --threads 2   # one run at a time, two torch threads
    python -m benchmarks status quick                   # done / todo, and the time left
    python -m benchmarks report quick                   # regenerates the suite's page from the stored files
    python -m benchmarks standings                      # regenerates the README's standings table

SUITE is a YAML file or the name of one in benchmarks/suites/. Results go to benchmarks/results/<suite>/<env>/, one
JSON file per finished run; runs whose file exists (and is valid) are skipped. A run saves a checkpoint every
--checkpoint-minutes, at a rollout boundary (under benchmarks/results/.checkpoints/, not committed), and an interrupted
run resumes from its checkpoint; the checkpoint is removed when the run's result file is written (``--keep-final``
keeps it as the run's final state, from which ``run --continue-from SUITE`` starts a longer run of the same training in
another suite; ``run --adopt-from SUITE`` takes the result of the very same run finished in another suite instead of
training it again). A finished run whose stored settings differ from those its suite gives now (a variant, an override or
an RL Zoo entry edited since) is listed by ``run`` and ``status``, and kept unless ``run --rerun-changed`` is given.
"""

import argparse
import contextlib
import functools
import importlib.util
import sys
import time
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows: runs are not locked
    fcntl = None  # type: ignore[assignment]

from benchmarks.backends import run_and_store
from benchmarks.checkpoints import (
    adopt_result,
    checkpoint_progress,
    continue_from_final,
    final_state_to_continue,
    recover_interrupted_save,
    result_to_adopt,
    stale_checkpoint,
)
from benchmarks.exploration import describe as describe_exploration
from benchmarks.exploration import write_exploration_report
from benchmarks.results import (
    PaceKey,
    ResultError,
    changed_settings,
    describe_changes,
    load_result,
    pace_key,
    paces,
    rough_pace,
)
from benchmarks.suite import RESULTS_DIR, Job, load_suite
from benchmarks.training import run_job_safely
from sb3_mpo.common.checks import positive_int_argument

#: Folder of the mid-run checkpoints inside the result store (git-ignored)
CHECKPOINTS_FOLDER = ".checkpoints"
#: Folder of the runners' locks on their runs inside the result store (git-ignored)
LOCKS_FOLDER = ".locks"


def _lock_path(job: Job, results_dir: Path) -> Path:
    """The file whose lock says which runner has the job: ``<results_dir>/.locks/<suite>/<env>/<name>.lock``."""
    return results_dir / LOCKS_FOLDER / job.suite / job.env_folder / f"{job.name}.lock"


def _claim(jobs: list[Job], results_dir: Path, held: contextlib.ExitStack) -> list[Job]:
    """
    Take each job's lock for this runner (an exclusive ``flock``, held until the runner is done and released by the
    system if it dies), so that a second runner on the same result store leaves the runs this one has to it instead
    of training them again over the same checkpoint. Without ``fcntl`` (Windows) every job is taken, unlocked.

    :param jobs: The jobs this runner would run
    :param results_dir: The result store
    :param held: Keeps the locked files open until the runner is done
    :return: The jobs it holds; the others are reported
    """
    if fcntl is None:
        return jobs
    claimed, taken = [], []
    for job in jobs:
        path = _lock_path(job, results_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(path, "a")  # held open, locked, until the runner is done
        if not _lock_soon(file, fcntl.LOCK_EX):
            file.close()
            taken.append(job.name)
            continue
        held.enter_context(file)
        claimed.append(job)
    if taken:
        print(f"{len(taken)} runs are left to another runner, which has them: {', '.join(taken)}", file=sys.stderr)
    return claimed


def _lock_soon(file: IO[str], kind: int, attempts: int = 5, pause: float = 0.04) -> bool:
    """
    :param file: An open lock file
    :param kind: ``fcntl.LOCK_EX`` or ``fcntl.LOCK_SH``
    :param attempts: How often to try before giving up: a ``status`` probing the lock holds it for an instant, which
        must not make a starting runner leave the job to a runner that does not exist
    :param pause: Seconds between the attempts
    :return: Whether the lock was taken
    """
    assert fcntl is not None
    for attempt in range(attempts):
        try:
            fcntl.flock(file, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(pause)
    return False


def _held_by_another_runner(job: Job, results_dir: Path) -> bool:
    """Whether another runner holds the job now (see :func:`_claim`), probed with a shared lock, at once."""
    path = _lock_path(job, results_dir)
    if fcntl is None or not path.exists():
        return False
    with open(path, "a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file, fcntl.LOCK_UN)
    return False


def _selected(jobs: list[Job], args: argparse.Namespace) -> list[Job]:
    return [
        job
        for job in jobs
        if (not args.envs or job.env in args.envs)
        and (not args.algos or job.algo in args.algos)
        and (not args.seeds or job.seed in args.seeds)
    ]


def _pending(jobs: list[Job], results_dir: Path) -> list[Job]:
    """The jobs without a valid result file; an invalid file is reported (and will be replaced by the re-run)."""
    pending = []
    for job in jobs:
        path = job.result_path(results_dir)
        if path.exists():
            try:
                load_result(path, job)
                continue
            except ResultError as error:
                print(f"invalid result file, the run will be redone: {error}", file=sys.stderr)
        pending.append(job)
    return pending


def _changed(jobs: list[Job], results_dir: Path) -> dict[Job, str]:
    """
    The finished runs of a returns suite whose stored settings or evaluation are not those the suite gives them now
    (its variants, overrides, evaluation, or the RL Zoo entry, were edited after they ran), each with a line that says
    what differs.

    :param jobs: Jobs with a valid result file
    :param results_dir: The result store
    """
    from benchmarks.zoo import algorithm_defaults, zoo_settings

    defaults = functools.cache(algorithm_defaults)
    changed = {}
    for job in jobs:
        if job.kind != "returns":
            continue  # exploration learners are configured in code, not by RL Zoo entries
        result = load_result(job.result_path(results_dir), job)
        evaluation = [
            f"{key}: {result.get(key)} -> {getattr(job, key)}"
            for key in ("eval_freq", "eval_episodes")
            if result.get(key) != getattr(job, key)
        ]
        try:
            changes = changed_settings(result["hyperparams"], zoo_settings(job), defaults(job.zoo_algo))
        except (KeyError, ValueError) as error:  # e.g. an RL Zoo entry that rl_zoo3 no longer has
            print(f"{job.name}: its settings cannot be resolved now, not compared ({error!r})", file=sys.stderr)
            changes = {}
        if changes or evaluation:
            described = [describe_changes(changes, result["commit"])] if changes else []
            changed[job] = "; ".join([*evaluation, *described])
    return changed


def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as held:
        return _run(args, held)


def _run(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    suite = load_suite(args.suite)
    jobs = _claim(_selected(suite.jobs, args), args.results, held)
    pending = _pending(jobs, args.results)
    changed = _changed([job for job in jobs if job not in pending], args.results)
    for job, how in changed.items():
        action = "it will be redone" if args.rerun_changed else "kept (--rerun-changed redoes it)"
        print(f"{job.name} was trained with other settings than the suite gives now, {action}: {how}", file=sys.stderr)
    if args.rerun_changed:
        pending += list(changed)
    if args.adopt_from:
        pending = _adopt(pending, args.adopt_from, args.results)
    print(f"suite {suite.name}: {len(jobs)} runs, {len(jobs) - len(pending)} finished, {len(pending)} to run", flush=True)

    checkpoints = _checkpoints(args)
    if args.continue_from:
        assert checkpoints is not None, "main refuses --continue-from with --no-checkpoints"
        _continue(pending, args.continue_from, checkpoints)
    worker = functools.partial(
        run_job_safely,
        checkpoints=checkpoints,
        checkpoint_minutes=args.checkpoint_minutes,
        torch_threads=args.threads,
        keep_final=args.keep_final,
    )
    failures = run_and_store(
        pending,
        args.results,
        describe_exploration if suite.kind == "exploration" else describe,
        args.backend,
        args.workers,
        args.ray_address,
        worker,
        checkpoints,
        args.keep_final,
    )
    return 1 if failures else 0


def _adopt(jobs: list[Job], other_suite: str, results_dir: Path) -> list[Job]:
    """
    Store as each job's result that of the same run in another suite, where it has one
    (:func:`~benchmarks.checkpoints.adopt_result`), and say which did.

    :param jobs: The jobs about to run
    :param other_suite: The other suite (a YAML file or the name of one)
    :param results_dir: The result store
    :return: The jobs still to run
    """
    others = load_suite(other_suite)
    still = []
    for job in jobs:
        settings = _resolved_settings(job)
        line = None if settings is None else adopt_result(job, others.jobs, results_dir, settings)
        if line is None:
            still.append(job)
        else:
            print(line, flush=True)
    print(f"{len(jobs) - len(still)} of {len(jobs)} runs adopted from suite {others.name}", flush=True)
    return still


def _continue(jobs: list[Job], shorter_suite: str, checkpoints: Path) -> None:
    """
    Start each job that has no checkpoint of its own from the kept final state of the same training in another suite,
    where it has one (:func:`~benchmarks.checkpoints.continue_from_final`), and say which did.

    :param jobs: The jobs about to run
    :param shorter_suite: The other suite (a YAML file or the name of one)
    :param checkpoints: The folder of checkpoints and kept final states
    """
    shorter = load_suite(shorter_suite)
    continued = 0
    for job in jobs:
        settings = _resolved_settings(job)
        line = None if settings is None else continue_from_final(job, shorter.jobs, checkpoints, settings)
        if line is not None:
            print(line, flush=True)
            continued += 1
    print(f"{continued} of {len(jobs)} runs continue a final state of suite {shorter.name}", flush=True)


def describe(result: dict) -> str:
    """One line about a finished run of a returns suite."""
    steps_per_second, minutes = result["env_steps_per_second"], result["train_seconds"] / 60
    return f"final return {result['final_return']:.1f}, {steps_per_second:.1f} env steps/s, {minutes:.1f} min"


def _checkpoints(args: argparse.Namespace) -> Path | None:
    """The folder of mid-run checkpoints: ``--checkpoints``, else ``.checkpoints`` in the result store; None if off."""
    if args.no_checkpoints:
        return None
    return args.checkpoints or args.results / CHECKPOINTS_FOLDER


def _settings_now(job: Job) -> tuple[dict[str, str] | None, str]:
    """
    :param job: A job
    :return: The settings its suite gives it now (stored form), resolved once for all that ``status`` says of it, or
        None with the reason where there are none (an exploration learner) or they cannot be resolved now
    """
    from benchmarks.zoo import zoo_settings

    if job.kind != "returns":
        return None, ""
    try:
        return zoo_settings(job), ""
    except (KeyError, ValueError) as error:
        return None, f"its settings cannot be resolved now ({error!r})"


def _resolved_settings(job: Job) -> dict[str, str] | None:
    """
    :param job: A job about to run
    :return: The settings its suite gives it now (see :func:`_settings_now`), or None where it has none; where they
        cannot be resolved, that is said, and the job is left to its run, which fails with the full error
    """
    settings, unresolved = _settings_now(job)
    if unresolved:
        print(f"{job.name}: {unresolved}", file=sys.stderr)
    return settings


def _stale_note(job: Job, checkpoints: Path, settings: dict[str, str] | None, unresolved: str) -> tuple[str, bool]:
    """
    :param job: A job with a checkpoint
    :param checkpoints: The folder of mid-run checkpoints
    :param settings: The settings the suite gives its run now, or None (see :func:`_settings_now`)
    :param unresolved: Why they could not be resolved, if so
    :return: What ``status`` adds to the checkpoint's line when it was saved for another set-up of the job or under
        other settings than the suite gives its run now (an empty string otherwise), and whether the run will
        therefore start over
    """
    stale = stale_checkpoint(job.checkpoint_path(checkpoints), job, settings)
    if stale is not None:
        return f", saved {stale.how}, the run will start over: {stale.changes}", True
    return (f", {unresolved}" if settings is None and unresolved else ""), False


def _continuation(job: Job, shorter: list[Job], checkpoints: Path, settings: dict[str, str]) -> tuple[str, int]:
    """
    :param job: A job without a result
    :param shorter: The jobs of the suite named by ``--continue-from``
    :param checkpoints: The folder of checkpoints and kept final states
    :param settings: The settings the suite gives it now
    :return: What ``status`` says about the final state ``run --continue-from`` would start the job from, and its step
        (``("", 0)`` where there is none)
    """
    found = final_state_to_continue(job, shorter, checkpoints, settings)
    if found is None:
        return "", 0
    source, final = found
    step = final["num_timesteps"]
    return f"  (would continue {source.suite}'s {source.name} from its final state at {step} steps)", step


def _stored_paces(results_dir: Path) -> dict[PaceKey, float]:
    """:func:`~benchmarks.results.paces` of every valid result file of a ``returns`` suite in the store."""
    records = []
    for path in sorted(results_dir.glob("*/*/*.json")):
        try:
            record = load_result(path)
        except ResultError:
            continue
        if record.get("kind", "returns") == "returns" and "hyperparams_source" in record:
            records.append(record)
    return paces(records)


def status(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    jobs = _selected(suite.jobs, args)
    pending = set(_pending(jobs, args.results))
    changed = _changed([job for job in jobs if job not in pending], args.results)
    checkpoints = _checkpoints(args)
    shorter = load_suite(args.continue_from).jobs if args.continue_from and checkpoints else None
    others = load_suite(args.adopt_from).jobs if args.adopt_from else None
    stored_paces = _stored_paces(args.results)
    seconds_left, guessed_seconds, guessed, unknown = 0.0, 0.0, 0, 0
    for job in jobs:
        settings, unresolved = _settings_now(job) if job in pending else (None, "")
        progress = None
        if checkpoints and job in pending:
            if not _held_by_another_runner(job, args.results):  # a runner's save in progress is its own to finish
                recover_interrupted_save(job.checkpoint_path(checkpoints))
            progress = checkpoint_progress(job.checkpoint_path(checkpoints))
        step = progress.step if progress else None
        note = ""
        if progress and progress.step and checkpoints:
            evaluated = progress.last_evaluation
            newest = f", last evaluation {evaluated[1]:.1f} at {evaluated[0]}" if evaluated else ""
            stale, starts_over = _stale_note(job, checkpoints, settings, unresolved)
            pace = progress.steps_per_second
            own = (
                ""
                if pace is None or starts_over
                else f", {pace:.1f} env steps/s so far: ~{(job.steps - progress.step) / pace / 60:.0f} min left"
            )
            note = f"  (checkpoint at {step} steps{newest}{own}{stale})"
            step = 0 if starts_over else step
        elif checkpoints and shorter is not None and settings is not None:
            note, step = _continuation(job, shorter, checkpoints, settings)
        elif checkpoints and job in pending and job.checkpoint_path(checkpoints).is_dir():  # a folder with no progress
            stale, _ = _stale_note(job, checkpoints, settings, unresolved)
            note = f"  (a checkpoint{stale})" if stale.startswith(", saved") else ""
        adoptable = None if others is None or settings is None else result_to_adopt(job, others, args.results, settings)
        if adoptable is not None:
            note, step = f"  (would adopt {adoptable[0].suite}'s {adoptable[0].name})", job.steps
        if job in changed:
            note = f"  (settings changed since: {changed[job]})"
        elif checkpoints and job not in pending and job.final_path(checkpoints).exists():
            note = "  (final state kept)"
        if job in pending and _held_by_another_runner(job, args.results):
            note += "  (a runner holds it: training it now, or after the runs before it)"
        if job in pending:
            key = pace_key(job.zoo_algo, job.env, settings, args.threads)
            pace, guess = stored_paces.get(key), rough_pace(stored_paces, key)
            if pace is not None:
                seconds = pace * (job.steps - (step or 0))
                seconds_left += seconds
                note += f"  ~{seconds / 60:.0f} min"
            elif guess is not None:
                seconds = guess * (job.steps - (step or 0))
                guessed_seconds, guessed = guessed_seconds + seconds, guessed + 1
                note += f"  ≈{seconds / 60:.0f} min"
            else:
                unknown += 1
        print(f"{'todo' if job in pending else 'done'}  {job.name}{note}")
    stale = f", {len(changed)} of them with other settings than now" if changed else ""
    print(f"{len(jobs) - len(pending)} / {len(jobs)} finished{stale}")
    if pending:
        known = len(pending) - guessed - unknown
        rougher = (
            f"; about {guessed_seconds / 3600:.1f} more for the {guessed} runs paced by the same algorithm on the same task "
            "under other settings or thread counts (the ≈ minutes, rougher)"
            if guessed
            else ""
        )
        without = f"; {unknown} without one to go by" if unknown else ""
        hours = seconds_left / 3600
        print(f"left: about {hours:.1f} hours of one run's time for the {known} runs with a stored run that trained the same "
              f"way with {args.threads} torch thread(s) (at its pace: the ~ minutes above){rougher}{without}")  # fmt: skip
    return 0


#: Modules the report needs beyond the package's own dependencies: they come with the [benchmarks] extra
REPORT_MODULES = ("rliable", "matplotlib", "pandas")


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """:return: The modules among ``names`` that cannot be imported"""
    return [name for name in names if importlib.util.find_spec(name) is None]


def report(args: argparse.Namespace) -> int:
    missing = missing_modules(REPORT_MODULES)
    if missing:
        print(f"report needs {', '.join(missing)}: install them with  pip install -e \".[benchmarks]\"", file=sys.stderr)
        return 2
    suite = load_suite(args.suite)
    out = args.out or suite.page_path
    if suite.kind == "exploration":
        write_exploration_report(suite, args.results, out, reading=args.reading)
    else:
        from benchmarks.report import write_report

        write_report(suite, args.results, out, args.figures or out.parent / "figures", reading=args.reading)
    print(f"wrote {out}")
    return 0


def standings(args: argparse.Namespace) -> int:
    from benchmarks.standings import README, write_standings

    readme = args.readme or README
    write_standings(readme, args.results)
    print(f"wrote the standings of {readme}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    for name, function in (("run", run), ("status", status), ("report", report)):
        command = commands.add_parser(name)
        command.set_defaults(function=function)
        command.add_argument("suite", help="a suite YAML file, or the name of one in benchmarks/suites/")
        command.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the result store")
        if name in ("run", "status"):
            command.add_argument("--envs", nargs="+", help="only these environments")
            command.add_argument("--algos", nargs="+", help="only these algorithms")
            command.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
            command.add_argument(
                "--checkpoints", type=Path, help=f"folder of mid-run checkpoints (default: RESULTS/{CHECKPOINTS_FOLDER})"
            )
            command.add_argument("--no-checkpoints", action="store_true", help="neither save nor resume checkpoints")
            command.add_argument(
                "--continue-from",
                metavar="SUITE",
                help="start each run from the final state (kept by run --keep-final) of the same training in SUITE, where "
                "the algorithm's training does not depend on its budget; the result records it (status: say which would)",
            )
            command.add_argument(
                "--adopt-from",
                metavar="SUITE",
                help="take as a run's result that of the same run (training, budget and settings) finished in SUITE, its "
                "numbers unchanged; the result records it (status: say which would)",
            )
    commands.choices["run"].add_argument("--backend", choices=["local", "ray"], default="local")
    commands.choices["run"].add_argument(
        "--rerun-changed",
        action="store_true",
        help="also redo finished runs whose stored settings differ from those the suite gives now (each is listed)",
    )
    commands.choices["run"].add_argument(
        "--workers", type=positive_int_argument, help="local processes (default: one per core)"
    )
    commands.choices["run"].add_argument(
        "--threads",
        type=positive_int_argument,
        default=1,
        help="torch threads per run (default 1; workers x threads should not exceed the cores); recorded in each result",
    )
    commands.choices["status"].add_argument(
        "--threads",
        type=positive_int_argument,
        default=1,
        help="torch threads the runs will train with (default 1): a run's estimate takes the pace of stored runs that "
        "trained the same way with as many",
    )
    commands.choices["run"].add_argument(
        "--checkpoint-minutes",
        type=float,
        default=10.0,
        help="save a run's checkpoint at the first rollout boundary this many minutes after the last save (0: at every one)",
    )
    commands.choices["run"].add_argument(
        "--keep-final",
        action="store_true",
        help="keep each finished run's final state (model, replay buffer, curve) for a longer run to continue",
    )
    commands.choices["run"].add_argument(
        "--ray-address", help="Ray cluster address ('auto', 'ray://host:10001') or 'local'; implies --backend ray"
    )
    commands.choices["report"].add_argument("--out", type=Path, help="the page to write (default: the suite's `page`)")
    commands.choices["report"].add_argument(
        "--figures", type=Path, help="folder of the figures (default: figures/ beside the page)"
    )
    commands.choices["report"].add_argument(
        "--reading", type=Path, help="a markdown file with the maintainers' reading, included in the page"
    )
    standings_command = commands.add_parser("standings", help="regenerate the README's standings table")
    standings_command.set_defaults(function=standings)
    standings_command.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the result store")
    standings_command.add_argument("--readme", type=Path, help="the file holding the table (default: README.md)")
    args = parser.parse_args(argv)
    needs_checkpoints = getattr(args, "keep_final", False) or getattr(args, "continue_from", None)
    if getattr(args, "no_checkpoints", False) and needs_checkpoints:
        parser.error("--keep-final and --continue-from need checkpoints: drop --no-checkpoints")
    if getattr(args, "ray_address", None):
        args.backend = "ray"
    return args.function(args)


if __name__ == "__main__":
    sys.exit(main())
