"""
Result files: one JSON record per finished run, their schema, and how they are read and written.

The driver alone writes them, atomically (write to a temporary file, then rename), so an interrupted suite never
leaves a half-written result. The report reads them with this module only: it imports neither the trainer nor torch.
"""

import inspect
import json
import math
import os
import statistics
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.suite import Job

#: Version of the result-file layout; files of another version are reported and not used
SCHEMA = 1
#: The key of an evaluation's ``train`` record that holds the mean return of the training episodes ended since the
#: previous evaluation (absent where none ended, and in files written before it was kept), in the ``rollout/``
#: namespace of SB3's own episode statistics
TRAINING_RETURN = "rollout/ep_rew_since_eval"
#: Keys every result file of a ``returns`` suite must have
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
#: Keys every result file of an ``exploration`` suite must have (its records say ``"kind": "exploration"``)
EXPLORATION_KEYS = (
    "schema",
    "kind",
    "suite",
    "algo",
    "env",
    "seed",
    "steps",
    "replay",
    "rollouts",
    "goal_reached",
    "first_goal_step",
    "train_seconds",
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
    kind = result.get("kind", "returns")
    missing = [key for key in (EXPLORATION_KEYS if kind == "exploration" else REQUIRED_KEYS) if key not in result]
    if missing:
        raise ResultError(f"{path}: missing keys {missing}")
    if result["schema"] != SCHEMA:
        raise ResultError(f"{path}: schema {result['schema']}, expected {SCHEMA}")
    if job is not None and kind != job.kind:
        raise ResultError(f"{path}: holds a result of kind {kind!r}, expected {job.kind!r}")
    if kind == "returns":
        if not result["curve"] or result["curve"][-1]["step"] < result["steps"]:
            raise ResultError(f"{path}: the evaluation curve stops before the budget of {result['steps']} steps")
        not_finite = [point["step"] for point in result["curve"] if not math.isfinite(point["mean"])]
        if not_finite or not math.isfinite(result["final_return"]):
            raise ResultError(
                f"{path}: holds a non-finite return (final_return={result['final_return']}, evaluations at steps {not_finite})"
            )
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
        tmp = Path(file.name)
        try:
            json.dump(result, file, indent=1)
        except BaseException:
            file.close()
            tmp.unlink()
            raise
    os.replace(tmp, path)


def stored_form(hyperparams: Mapping[str, Any]) -> dict[str, str]:
    """
    :param hyperparams: Settings as rl_zoo3 resolved them (an RL Zoo entry after a suite's overrides)
    :return: The settings as result files store them: the ``repr`` of each value (an entry's ``policy_kwargs`` string
        stays a string), without ``n_timesteps``, which the suite's budget replaces
    """
    return {key: repr(value) for key, value in hyperparams.items() if key != "n_timesteps"}


def class_defaults(cls: type) -> dict[str, str]:
    """
    :param cls: An algorithm's class
    :return: The keyword defaults of its constructor, in the stored form (:func:`stored_form`)
    """
    parameters = inspect.signature(cls).parameters.values()
    return stored_form({item.name: item.default for item in parameters if item.default is not inspect.Parameter.empty})


#: The stored forms of an empty keyword dict (a Python dict, or an RL Zoo entry's string to evaluate)
EMPTY_KWARGS = frozenset({"{}", "'{}'", "'dict()'"})


def changed_settings(
    stored: Mapping[str, str], current: Mapping[str, str], defaults: Mapping[str, str]
) -> dict[str, tuple[str | None, str | None]]:
    """
    The settings in which a stored run and the run its suite would start now differ, both in :func:`stored_form`.
    A setting that only the current side names counts as the algorithm's current default on the stored side, which
    is what the stored run used unless that default changed since (its commit tells); the difference is reported
    where the values differ, or where the algorithm has no default for it (a required argument, an RL Zoo key): the
    run did not record it. A setting that only the stored side names is compared with the current default likewise.
    An empty keyword dict and ``None`` are the same setting (SB3 reads a ``None`` ``policy_kwargs`` as ``{}``).

    :param stored: The settings the run trained with (its result file's ``hyperparams``)
    :param current: The settings the suite gives the run now (its RL Zoo entry after the suite's overrides)
    :param defaults: The algorithm's current keyword defaults, in the same form
    :return: For each differing setting, its stored and current value (None: not named on that side)
    """

    def meaning(value: str | None, key: str) -> str | None:
        value = value if value is not None else defaults.get(key)
        # An empty keyword dict is the None default of SB3's ``*_kwargs`` arguments, however an entry spells it
        return "None" if value in EMPTY_KWARGS else value

    changes = {}
    for key in sorted(stored.keys() | current.keys()):
        then, now = stored.get(key), current.get(key)
        if meaning(then, key) != meaning(now, key):
            changes[key] = (then, now)
    return changes


def describe_changes(changes: Mapping[str, tuple[str | None, str | None]], commit: str) -> str:
    """
    One line for :func:`changed_settings`' result: ``key: then -> now`` for each setting, where a setting the stored
    side does not name reads ``not recorded (commit ...)`` and one the current side does not name ``not set``.

    :param changes: The differing settings, as :func:`changed_settings` returns them
    :param commit: The commit the stored side trained at (or another label of its code)
    :return: The line
    """

    def shown(value: str | None, unset: str) -> str:
        return unset if value is None else value

    return "; ".join(
        f"{key}: {shown(then, f'not recorded ({commit})')} -> {shown(now, 'not set (default)')}"
        for key, (then, now) in changes.items()
    )


def trained_algorithm(result: Mapping[str, Any]) -> str:
    """
    :param result: A result record of a ``returns`` suite
    :return: The algorithm it trained (a variant's base algorithm), read off its settings' source
        (``rl_zoo3/hyperparams/sac.yml, entry Hopper-v4`` -> ``sac``)
    """
    return Path(str(result["hyperparams_source"]).split(",")[0]).stem


def legs(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """
    :param result: A result record
    :return: The records of the stretches of training its time covers: the run itself (its last leg), each resume and
        the leg before it (as the runner records them), and the shorter runs it continues (``continued_from``, in turn)
    """
    found: list[Mapping[str, Any]] = [result]
    for resume in result.get("resumes", []):
        found.extend(leg for leg in (resume, resume.get("before")) if leg)
    shorter = result.get("continued_from")
    while shorter:
        found.append(shorter)
        shorter = shorter.get("continued_from")
    return found


def torch_threads(record: Mapping[str, Any]) -> int:
    """The torch threads a run or leg trained with (files from before the runner recorded it ran with one)."""
    return int(record.get("torch_threads", 1))


#: What :func:`paces` keys a pace by: the trained algorithm, the environment, the settings (stored form, sorted; None
#: where they cannot be resolved) and the torch threads of every leg (None where its legs trained with different counts)
PaceKey = tuple[str, str, tuple[tuple[str, str], ...] | None, int | None]


def pace_key(algorithm: str, env: str, settings: Mapping[str, str] | None, threads: int | None) -> PaceKey:
    """
    :param algorithm: The trained algorithm (a variant's base algorithm)
    :param env: The environment
    :param settings: The settings the run trains with (:func:`stored_form`), None where they cannot be resolved
    :param threads: The torch threads it trains with
    :return: The key of :func:`paces` for runs that train this way
    """
    return algorithm, env, None if settings is None else tuple(sorted(settings.items())), threads


def recorded_threads(result: Mapping[str, Any]) -> list[int]:
    """
    :param result: A result record
    :return: The distinct torch threads of the run and of its other :func:`legs` that recorded them (a final state kept
        before legs were recorded continues with None), in increasing order
    """
    stretches = legs(result)
    return sorted({torch_threads(leg) for leg in stretches if leg is result or leg.get("torch_threads") is not None})


def trained_threads(result: Mapping[str, Any]) -> int | None:
    """
    :param result: A result record
    :return: The torch threads of all its :func:`legs` that recorded them, or None where two of them differ
    """
    counts = recorded_threads(result)
    return counts[0] if len(counts) == 1 else None


def paces(results: Iterable[Mapping[str, Any]]) -> dict[PaceKey, float]:
    """
    The wall-clock that finished runs took per environment step (training, evaluation and checkpoints over their steps,
    as measured on their machines beside whatever else ran there), as the median over the runs that trained the same
    way: the same algorithm, environment, settings and torch threads, whatever their suite, seed and budget. A run
    another suite adopted (``adopted_from``, the same numbers) counts once.

    :param results: Result records of ``returns`` suites
    :return: Seconds per step by :func:`pace_key`
    """
    samples: dict[PaceKey, list[float]] = {}
    counted = set()
    for result in results:
        seconds = result["train_seconds"] + result.get("eval_seconds", 0.0) + result.get("checkpoint_seconds", 0.0)
        steps = result.get("num_timesteps", result["steps"])
        key = pace_key(trained_algorithm(result), result["env"], result["hyperparams"], trained_threads(result))
        training = (key, result.get("seed"), steps, seconds)
        if training not in counted:
            counted.add(training)
            samples.setdefault(key, []).append(seconds / steps)
    return {key: statistics.median(values) for key, values in samples.items()}


def rough_pace(exact: Mapping[PaceKey, float], key: PaceKey) -> float | None:
    """
    A rougher guess for a training that has no stored run with its settings and threads: the median pace of the same
    settings under other thread counts where there are such runs, else of the algorithm's trainings on the
    environment under any settings.

    :param exact: Paces by training (:func:`paces`)
    :param key: The training to guess for
    :return: Seconds per step, or None where the algorithm has no stored run on the environment
    """
    for same in (lambda other: key[2] is not None and other[:3] == key[:3], lambda other: other[:2] == key[:2]):
        found = [pace for other, pace in exact.items() if same(other)]
        if found:
            return statistics.median(found)
    return None
