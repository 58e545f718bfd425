"""
The benchmark page of a suite, generated from its stored result files only: per-environment tables (mean ± std,
and IQM with 95% stratified-bootstrap confidence intervals over seeds, by rliable), aggregates over environments
(IQM, performance profiles and probability of improvement of MPO over each baseline, by rliable), learning curves,
the sample-efficiency comparison with on-policy baselines, and a speed table.

Statistics follow Agarwal et al. (2021), "Deep Reinforcement Learning at the Edge of the Statistical Precipice"
(rliable). Returns are aggregated over environments after normalisation per environment: by the fixed reference
returns the suite names (``normalisation:``, :mod:`benchmarks.references`), whose scores compare across pages, or else
min-max over the final returns of the algorithms that ran on every environment of the suite (0 = worst run, 1 = best
run), whose scores compare the algorithms of this page with each other and with nothing else.
"""

import contextlib
import itertools
import json
import os
import re
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.goal import Criterion, Goal, judge_goal, verdict
from benchmarks.references import ScoreReference
from benchmarks.results import (
    TRAINING_RETURN,
    ResultError,
    changed_settings,
    class_defaults,
    legs,
    load_result,
    recorded_threads,
    trained_algorithm,
)
from benchmarks.suite import Suite
from sb3_mpo import MPO

#: Bootstrap repetitions of the confidence intervals
BOOTSTRAP_REPS = 2000
ON_POLICY = ("ppo", "trpo", "a2c")
#: Folder of the result store holding ``benchmarks/speed.py``'s records, and the figures of a record, per algorithm
QUIET_SPEED_FOLDER = "speed_quiet"
SPEED_KEYS = ("env_steps_per_second", "gradient_steps_per_second")
#: What the page says about the runs whose result file sets one of these keys, before ": N of M runs"
RUN_DISCLOSURES = {
    "migrated_from": "Trained not through the experiment manager but by the retired `benchmarks/compare.py`, which built "
    "the models directly from the same settings and evaluated them the same way (the files were converted to this layout "
    "with their numbers unchanged, and each names its original)",
    "resumes": "Interrupted and resumed from a mid-run checkpoint (model, optimisers, replay buffer and normalisation "
    "restored; the environments restarted with a fresh episode and the random generators from the run's seed; each file "
    "lists where)",
    "continued_from": "Continued from the kept final state of the same training (algorithm, settings, seed, evaluation) in "
    "a shorter suite, which each file names: the first part of its curve and of its timings is that run's, and at the join "
    "the environments restarted with a fresh episode and the random generators from the run's seed, as at a resume",
    "adopted_from": "Trained by another suite, which each file names, with the same algorithm, settings, seed, budget and "
    "evaluation: the result is that run's, its numbers unchanged",
    "evaluated_past_budget": "Trained past the budget (a rollout of its vectorised environments ended beyond it) and "
    "evaluated there once more: that evaluation is left out and the run's final return is its last evaluation within the "
    "budget, as every other run's is",
}
#: Seed of every bootstrap, so that the same result files always give the same page
BOOTSTRAP_SEED = 0


@contextlib.contextmanager
def _seeded_bootstrap() -> Iterator[np.random.RandomState]:
    """
    A seeded generator for rliable, with NumPy's global generator seeded too for the duration: rliable's
    ``StratifiedBootstrap`` draws its run indices from ``np.random`` and ignores its ``random_state`` (rliable 1.2).
    The global generator's state is restored afterwards.
    """
    state = np.random.get_state()
    np.random.seed(BOOTSTRAP_SEED)
    try:
        yield np.random.RandomState(BOOTSTRAP_SEED)
    finally:
        np.random.set_state(state)


def interval_estimates(
    scores: dict[str, Any], metric: Callable[..., np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """
    rliable's point estimates and 95% stratified-bootstrap intervals, one key at a time, each bootstrap seeded
    afresh: a key's interval depends on its own scores only, not on which other algorithms (and how many of their
    runs) share the page and so drew from the generator before it.

    :param scores: Score matrices (runs x tasks), or tuples of them for a metric of several, by key
    :param metric: The aggregate metric, as rliable takes it
    :return: The point estimates and the intervals by key
    """
    from rliable import library

    points, intervals = {}, {}
    for key, score in scores.items():
        with _seeded_bootstrap() as rng:
            point, interval = library.get_interval_estimates({key: score}, metric, reps=BOOTSTRAP_REPS, random_state=rng)
        points[key], intervals[key] = point[key], interval[key]
    return points, intervals


def _iqm(scores: np.ndarray) -> np.ndarray:
    """The interquartile mean of a (runs x tasks) score matrix, as the one-element array rliable's intervals take."""
    from rliable import metrics

    return np.array([metrics.aggregate_iqm(scores)])


Results = dict[str, dict[str, list[dict[str, Any]]]]  # env -> algo -> runs (sorted by seed)


def collect(suite: Suite, results_dir: Path) -> tuple[Results, list[str], list[str]]:
    """
    Read the suite's result files. A file that is unreadable, partial or describes another run is reported and
    skipped, never used.

    :return: The valid runs by environment and algorithm, the problems found, and the runs not finished yet
    """
    results: Results = defaultdict(lambda: defaultdict(list))
    problems, missing = [], []
    for job in suite.jobs:
        path = job.result_path(results_dir)
        if not path.exists():
            missing.append(job.name)
            continue
        try:
            results[job.env][job.algo].append(within_budget(load_result(path, job)))
        except ResultError as error:
            problems.append(str(error))
    for runs_by_algo in results.values():
        for runs in runs_by_algo.values():
            runs.sort(key=lambda run: run["seed"])
    return results, problems, missing


def within_budget(run: dict[str, Any]) -> dict[str, Any]:
    """
    :param run: A stored result
    :return: The result as the page reads it: where its algorithm trained past the budget (PPO's last rollout of 16
        environments ends after it) and the runner evaluated it there once more, without that evaluation, its final
        return its last evaluation within the budget (``evaluated_past_budget`` says at which step the other was)
    """
    curve = run.get("curve") or []  # an exploration suite's record has none
    within = [point for point in curve if point["step"] <= run["steps"]]
    if len(within) == len(curve) or not within:
        return run
    return {**run, "curve": within, "final_return": within[-1]["mean"], "evaluated_past_budget": curve[-1]["step"]}


def iqm_estimates(scores: dict[str, np.ndarray]) -> dict[str, tuple[float, float, float]]:
    """The IQM of each (runs x tasks) score matrix with its 95% stratified-bootstrap confidence interval (rliable)."""
    point, interval = interval_estimates(scores, _iqm)
    return {algo: (float(point[algo][0]), float(interval[algo][0, 0]), float(interval[algo][1, 0])) for algo in scores}


def iqm_interval(finals: dict[str, np.ndarray]) -> dict[str, tuple[float, float, float]]:
    """IQM of each algorithm's final returns with its 95% stratified-bootstrap confidence interval (rliable)."""
    return iqm_estimates({algo: values.reshape(-1, 1) for algo, values in finals.items()})


def _value_at(run: dict[str, Any], step: int) -> float | None:
    """The evaluation return at the last evaluation at or before ``step``, None if there is none."""
    points = [point["mean"] for point in run["curve"] if point["step"] <= step]
    return points[-1] if points else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def mean_and_spread(finals: np.ndarray | list[float], digits: int = 1) -> str:
    """
    ``mean ± std`` over seeds (the population standard deviation of the seeds' values); one seed has no spread, so it
    reads ``mean ± —``, not a std of 0.

    :param finals: One value per seed (a final return, an exploration metric)
    :param digits: Decimals shown
    """
    spread = "—" if len(finals) == 1 else f"{np.std(finals):.{digits}f}"
    return f"{np.mean(finals):.{digits}f} ± {spread}"


def _point_and_interval(point: float, low: float, high: float, runs: int, digits: int = 1) -> str:
    """``point [low, high]``; the point alone for one run, whose bootstrap interval of one point would read as certainty."""
    estimate = f"{point:.{digits}f}"
    return estimate if runs == 1 else f"{estimate} [{low:.{digits}f}, {high:.{digits}f}]"


def threshold_table(runs_by_algo: dict[str, list[dict[str, Any]]], threshold: float) -> list[str]:
    """Per algorithm: how many seeds' evaluation return reached ``threshold`` within the budget, and when first."""
    lines = [
        f"| algorithm | seeds reaching {threshold:g} | first step it was reached, per seed | final return ≥ {threshold:g} |",
        "|---|---|---|---|",
    ]
    for algo, runs in runs_by_algo.items():
        firsts = [next((point["step"] for point in run["curve"] if point["mean"] >= threshold), None) for run in runs]
        reached = sum(first is not None for first in firsts)
        steps = ", ".join("—" if first is None else f"{first:,}" for first in firsts)
        at_end = sum(run["final_return"] >= threshold for run in runs)
        lines.append(f"| {algo.upper()} | {reached} / {len(runs)} | {steps} | {at_end} / {len(runs)} |")
    return lines


def env_table(runs_by_algo: dict[str, list[dict[str, Any]]]) -> list[str]:
    finals = {algo: np.array([run["final_return"] for run in runs]) for algo, runs in runs_by_algo.items()}
    iqm = iqm_interval(finals)
    lines = [
        "| algorithm | budget (steps) | seeds | final return, mean ± std | IQM [95% CI] | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for algo, runs in runs_by_algo.items():
        point, low, high = iqm[algo]
        per_seed = ", ".join(f"{value:.1f}" for value in finals[algo])
        lines.append(
            f"| {algo.upper()} | {runs[0]['steps']:,} | {len(runs)} | {mean_and_spread(finals[algo])} "
            f"| {_point_and_interval(point, low, high, len(runs))} | {per_seed} |"
        )
    return lines


#: Evaluations at the end of a run that :func:`late_return` averages
LATE_EVALUATIONS = 3


def late_return(run: dict[str, Any], evaluations: int = LATE_EVALUATIONS) -> float:
    """The mean of a run's last ``evaluations`` evaluation returns (all of them if it has fewer)."""
    return float(np.mean([point["mean"] for point in run["curve"][-evaluations:]]))


def mean_over_run(run: dict[str, Any]) -> float:
    """The mean of all of a run's evaluation returns: the area under its learning curve over the evaluations' span."""
    return float(np.mean([point["mean"] for point in run["curve"]]))


def late_training_return(run: dict[str, Any], evaluations: int = LATE_EVALUATIONS) -> float | None:
    """
    The mean return of the training episodes (the behaviour policy's, exploration included) over the windows before a
    run's last ``evaluations`` evaluations: the mean of their :data:`~benchmarks.results.TRAINING_RETURN` where the
    window recorded one; None where none did (files written before it was kept, or no episode ended).
    """
    recorded = [(point.get("train") or {}).get(TRAINING_RETURN) for point in run["curve"][-evaluations:]]
    found = [value for value in recorded if value is not None]
    return float(np.mean(found)) if found else None


def _mean_and_seeds(values: list[float | None]) -> str:
    """``mean | v1, v2, ...`` over the seeds that have a value (``—`` for one that has none, and for no value at all)."""
    found = [value for value in values if value is not None]
    per_seed = ", ".join("—" if value is None else f"{value:.0f}" for value in values)
    return f"{np.mean(found):.1f} | {per_seed}" if found else f"— | {per_seed}"


def curve_summary_table(runs_by_algo: dict[str, list[dict[str, Any]]]) -> list[str]:
    """
    Per algorithm, readings of its curves less tied to one evaluation than the final return, means over its seeds: the
    mean of the last :data:`LATE_EVALUATIONS` evaluations (:func:`late_return`), the mean over every evaluation of the
    run (:func:`mean_over_run`), which counts how early the returns came, and, where the runs recorded it, the return of
    the training episodes over the same late windows (:func:`late_training_return`: the behaviour policy's, which the
    deterministic evaluation leaves out).
    """
    training = {algo: [late_training_return(run) for run in runs] for algo, runs in runs_by_algo.items()}
    with_training = any(value is not None for values in training.values() for value in values)
    titles = [f"mean of the last {LATE_EVALUATIONS} evaluations", "mean over the run's evaluations"]
    titles += [f"training episodes' return, last {LATE_EVALUATIONS} windows"] if with_training else []
    lines = [
        "| algorithm | seeds | " + " | ".join(f"{title} | per seed" for title in titles) + " |",
        "|---|---|" + "---|---|" * len(titles),
    ]
    for algo, runs in runs_by_algo.items():
        readings: list[list[float | None]] = [[late_return(run) for run in runs], [mean_over_run(run) for run in runs]]
        columns = [_mean_and_seeds(values) for values in readings + ([training[algo]] if with_training else [])]
        lines.append(f"| {algo.upper()} | {len(runs)} | {' | '.join(columns)} |")
    return lines


#: What training logged, shown per environment where the runs recorded it (key -> column title)
DIAGNOSTICS = {
    "train/temperature": "MPO's temperature η",
    "train/kl_q": "KL(q ‖ π_old)",
    "train/alpha_mean": "the mean's multiplier α_μ",
    "train/std_mean": "policy std (mean)",
    "train/mean_outside_box": "policy means outside the box",
    "train/q_mean": "Q (mean)",
    "train/ent_coef": "SAC's entropy coefficient",
    "train/critic_loss": "critic loss",
    "train/mass_outside": "target mass outside the support",
    TRAINING_RETURN: "training episodes' return",
}


def diagnostics_table(runs_by_algo: dict[str, list[dict[str, Any]]]) -> list[str]:
    """
    Per algorithm, the medians over its seeds of what training logged last before the final evaluation (the result
    files' ``curve[-1]["train"]``, :data:`DIAGNOSTICS` only), and the mean return of its training episodes since the
    evaluation before (the behaviour policy's, beside the deterministic one's final return); nothing where no run
    recorded any.
    """
    finals = {algo: [run["curve"][-1].get("train") or {} for run in runs] for algo, runs in runs_by_algo.items()}
    keys = [key for key in DIAGNOSTICS if any(key in logged for runs in finals.values() for logged in runs)]
    if not keys:
        return []
    episodes = ", and the return of the training episodes since the evaluation before" if TRAINING_RETURN in keys else ""
    lines = [
        f"Training at the final evaluation (what `train()` logged last{episodes}; medians over the seeds that recorded it):",
        "",
        f"| algorithm | seeds | {' | '.join(DIAGNOSTICS[key] for key in keys)} |",
        f"|---|---|{'---|' * len(keys)}",
    ]
    for algo, runs in finals.items():
        recorded = [logged for logged in runs if logged]
        if recorded:
            values = [[logged[key] for logged in recorded if key in logged] for key in keys]
            cells = [f"{np.median(found):.3g}" if found else "—" for found in values]
            lines.append(f"| {algo.upper()} | {len(recorded)} | {' | '.join(cells)} |")
    return lines


#: The counts of trust-region excursions that MPO's runs log (key -> the constraint, as the table names it)
EXCURSIONS = {
    "train/kl_mean_max_excursions": "the mean's (epsilon_mean)",
    "train/kl_std_max_excursions": "the std's (epsilon_std)",
    "train/kl_policy_excursions": "the policy's (epsilon_policy)",
}


def peak_ratio_key(count_key: str) -> str:
    """:return: The key of the largest KL of a judged call, in multiples of its bound, beside an excursion count's key"""
    return count_key.removesuffix("_excursions") + "_peak_ratio"


def excursions_table(runs_by_algo: dict[str, list[dict[str, Any]]]) -> list[str]:
    """
    Per run, how many ``train()`` calls left an M-step trust region by more than ``MPO.trust_region_excursion_factor``
    times its bound over the whole run (the counts training logged last, which a resumed run carries on), and where the
    run logged it the largest call's KL in multiples of the bound; nothing where no run recorded them (runs record
    them from the commit that counts them).
    """
    finals = [(algo, run, run["curve"][-1].get("train") or {}) for algo, runs in runs_by_algo.items() for run in runs]
    keys = [key for key in EXCURSIONS if any(key in logged for _, _, logged in finals)]
    if not keys:
        return []
    lines = [
        "Trust-region excursions over each run (`train()` calls whose KL went past `MPO.trust_region_excursion_factor`, "
        f"{MPO.trust_region_excursion_factor:g}, times its bound; docs/algorithm.md), and in brackets, where the run "
        "logged it, the largest call's KL in multiples of its bound:",
        "",
        f"| algorithm | seed | {' | '.join(EXCURSIONS[key] for key in keys)} |",
        f"|---|---|{'---|' * len(keys)}",
    ]
    for algo, run, logged in finals:
        if any(key in logged for key in keys):
            cells = [excursions_cell(logged, key) for key in keys]
            lines.append(f"| {algo.upper()} | {run['seed']} | {' | '.join(cells)} |")
    return lines


def excursions_cell(logged: dict[str, float], key: str) -> str:
    """:return: An excursion count as the run logged it last, with its largest call's ratio to the bound where logged"""
    if key not in logged:
        return "—"
    peak = logged.get(peak_ratio_key(key))
    return f"{logged[key]:.0f}" + (f" ({peak:.3g}x)" if peak is not None else "")


def interval_counts(run: dict[str, Any], key: str) -> list[float] | None:
    """
    :param run: A stored run
    :param key: A count that training logs as a running total (:data:`EXCURSIONS`)
    :return: How much it grew over each evaluation interval (the first from the start of training); None where the
        run logged other training values without it (runs from before it was counted, or resumed from one), whose
        intervals would not all hold their own counts. An evaluation with nothing logged since the one before (before
        the first update, or with updates less frequent than evaluations) keeps the total it follows.
    """
    totals = [0.0]
    for point in run["curve"]:
        logged = point.get("train") or {}
        if key not in logged and logged:
            return None
        totals.append(float(logged.get(key, totals[-1])))
    return list(np.diff(totals)) if any(key in (point.get("train") or {}) for point in run["curve"]) else None


def largest_fall(run: dict[str, Any]) -> int | None:
    """
    :param run: A stored run
    :return: The index of the evaluation whose mean return fell furthest below the one before it; None where none fell
    """
    means = [point["mean"] for point in run["curve"]]
    drops = [before - after for before, after in itertools.pairwise(means)]
    if not drops or max(drops) <= 0:
        return None
    return int(np.argmax(drops)) + 1


def falls_table(runs_by_algo: dict[str, list[dict[str, Any]]]) -> list[str]:
    """
    Whether a run's largest fall in evaluation return comes after a burst of trust-region excursions: per run that
    counted them throughout (:func:`interval_counts`), the excursions in the interval that ends at that evaluation and
    in the one before it, beside the median over all its intervals; nothing where no run can say.
    """
    rows = []
    for algo, runs in runs_by_algo.items():
        for run in runs:
            counts = {key: interval_counts(run, key) for key in EXCURSIONS}
            counted = {key: per_interval for key, per_interval in counts.items() if per_interval is not None}
            fall = largest_fall(run)
            if counted and fall is not None:
                rows.append((algo, run, fall, counted))
    if not rows:
        return []
    keys = [key for key in EXCURSIONS if any(key in counted for *_, counted in rows)]
    lines = [
        "Each run's largest fall between two evaluations, and the excursions counted in the evaluation interval that ends "
        "at it and in the one before (median over the run's intervals):",
        "",
        f"| algorithm | seed | largest fall (env steps: evaluation returns) | {' | '.join(EXCURSIONS[key] for key in keys)} |",
        f"|---|---|---|{'---|' * len(keys)}",
    ]
    for algo, run, fall, counted in rows:
        before, after = run["curve"][fall - 1], run["curve"][fall]
        where = f"{before['step']:,} → {after['step']:,}: {before['mean']:.0f} → {after['mean']:.0f}"
        cells = [
            (
                f"{counted[key][fall]:.0f}, {counted[key][fall - 1]:.0f} (median {np.median(counted[key]):.0f})"
                if key in counted
                else "—"
            )
            for key in keys
        ]
        lines.append(f"| {algo.upper()} | {run['seed']} | {where} | {' | '.join(cells)} |")
    return lines


def paired_table(runs_by_algo: dict[str, list[dict[str, Any]]]) -> list[str]:
    """
    The runs that evaluated their policy a second way after each evaluation (a suite's ``paired_evaluation``: MPO's
    clipped Gaussian's mean as the deterministic action, beside its mode), each way's final return and mean over the
    evaluations both scored, and at how many of those the second way scored higher; nothing where no run did.
    """
    rows = []
    for algo, runs in runs_by_algo.items():
        for run in runs:
            pairs = [(point["mean"], point["mean_action"]["mean"]) for point in run["curve"] if "mean_action" in point]
            if not pairs:
                continue
            modes, means = np.array(pairs).T
            last = run["curve"][-1]
            final = f"{last['mean']:.0f} / " + (f"{last['mean_action']['mean']:.0f}" if "mean_action" in last else "—")
            over_run = f"{modes.mean():.0f} / {means.mean():.0f}"
            rows.append(
                f"| {algo.upper()} | {run['seed']} | {final} | {over_run} | {int(np.sum(means > modes))} of {len(pairs)} |"
            )
    if not rows:
        return []
    return [
        "The same policy evaluated a second way after each evaluation, on an environment seeded alike (its episodes start "
        "from the same states): the deterministic action as the mode of MPO's Gaussian, clip(μ), and as the clipped "
        'Gaussian\'s mean, E[clip(u)] (`deterministic_action="mean"`):',
        "",
        "| algorithm | seed | final return: mode / mean | mean over the evaluations: mode / mean "
        "| evaluations where the mean scored higher |",
        "|---|---|---|---|---|",
        *rows,
    ]


def sample_efficiency_table(results: Results) -> list[str]:
    """MPO's return at its budget N beside each on-policy baseline's at N and at its own budget (10·N in the suites)."""
    lines = []
    for env, runs_by_algo in results.items():
        if "mpo" not in runs_by_algo:
            continue
        budget = runs_by_algo["mpo"][0]["steps"]
        mpo = np.mean([run["final_return"] for run in runs_by_algo["mpo"]])
        for algo in (algo for algo in runs_by_algo if algo in ON_POLICY):
            runs = runs_by_algo[algo]
            at_budget = [value for value in (_value_at(run, budget) for run in runs) if value is not None]
            at_budget_mean = float(np.mean(at_budget)) if at_budget else None
            lines.append(
                f"| {env} | {mpo:.1f} ({budget:,}) | {algo.upper()} | {_fmt(at_budget_mean)} "
                f"| {np.mean([run['final_return'] for run in runs]):.1f} ({runs[0]['steps']:,}) |"
            )
    if not lines:
        return []
    header = [
        "| environment | MPO at N (N) | baseline | baseline at N | baseline at its budget |",
        "|---|---|---|---|---|",
    ]
    return header + lines


#: What ``platform.processor()`` or ``platform.machine()`` gave the files recorded before the processor's model was
#: read from /proc/cpuinfo (:func:`benchmarks.stamp.cpu_model`): an architecture, not a processor
ARCHITECTURES = ("x86_64", "aarch64", "arm64", "AMD64", "i386", "i686")


def processor(run: Mapping[str, Any]) -> str:
    """
    :param run: A result record, whose ``machine`` reads "host processor N cores system" (:func:`benchmarks.stamp.machine`)
    :return: The processor's model that trained it, or "not recorded" where the file names an architecture only
    """
    match = re.fullmatch(r"\S+ (.+) \d+ cores(?: \S+)?", run.get("machine", ""))
    model = match.group(1) if match else ""
    return "not recorded" if model in ("", *ARCHITECTURES) else model


SPEED_NOTE = (
    "Training wall-clock only (evaluation excluded), a row per processor: files written before the runner read the "
    "processor's model say `not recorded`, and speeds measured on two processors are not comparable."
)


def speed_group(run: dict[str, Any]) -> tuple[str, str]:
    """
    :param run: A result record
    :return: Its processor and torch threads, as the speed table groups it; a resumed run whose legs trained on other
        processors or thread counts (as its resumes record each leg and the one before it, and ``continued_from`` the
        shorter runs it continues, where the runner that trained it did) is "mixed: ..." in the one that differs, a row
        of its own. Legs recorded before the runner kept their machine count for their thread count alone.
    """
    models = sorted({processor(leg) for leg in legs(run) if leg is run or leg.get("machine") is not None})
    threads = [str(count) for count in recorded_threads(run)]

    def label(values: list[str]) -> str:
        return values[0] if len(values) == 1 else f"mixed: {' / '.join(values)}"

    return label(models), label(threads)


def speed_table(results: Results) -> list[str]:
    """
    Median speeds per environment and algorithm, a row per processor and torch-thread count, so that no median mixes
    two machines or two thread counts (:func:`speed_group`).
    """
    lines = [
        "| environment | algorithm | network | batch | processor | torch threads | runs | env steps/s (median) "
        "| gradient steps/s (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for env, runs_by_algo in results.items():
        for algo, all_runs in runs_by_algo.items():
            groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
            for run in all_runs:
                groups[speed_group(run)].append(run)
            for (model, threads), runs in sorted(groups.items()):
                gradient = [run["gradient_steps_per_second"] for run in runs if run.get("gradient_steps_per_second")]
                lines.append(
                    f"| {env} | {algo.upper()} | {runs[0].get('net_arch', '—')} | {runs[0].get('batch_size', '—')} "
                    f"| {model} | {threads} | {len(runs)} | {np.median([run['env_steps_per_second'] for run in runs]):.1f} "
                    f"| {_fmt(float(np.median(gradient)) if gradient else None)} |"
                )
    return lines


def quiet_settings(record: dict[str, Any], mpo_runs: dict[str, list[dict[str, Any]]]) -> str:
    """
    :param record: A record of ``benchmarks/speed.py``
    :param mpo_runs: The page's MPO runs on the record's environment, by algorithm name
    :return: Which MPO settings the record timed, as its row says: those of the page's MPO algorithms that trained with
        them, other ones, or not recorded (records from before speed.py kept them timed mpo.yml's entry at their commit)
    """
    timed = record.get("mpo_hyperparams")
    if timed is None:
        return "its entry at that commit (not recorded)"
    if not mpo_runs:
        return "recorded; no MPO run on this page to compare"
    defaults = class_defaults(MPO)
    same = [
        f"`{algo}`"
        for algo, runs in mpo_runs.items()
        if any(not changed_settings(run["hyperparams"], timed, defaults) for run in runs)
    ]
    return f"as {', '.join(same)} here" if same else "other than this page's MPO runs"


def quiet_speed_table(results: Results, results_dir: Path) -> list[str]:
    """
    The measurements of ``benchmarks/speed.py`` for the page's environments
    (``<results_dir>/speed_quiet/<env>_<commit>.json``): MPO and SAC alternating in one process, so that both see the
    same load (recorded as the 1-minute load average where the record has it), unlike the suite runs' figures. Each
    row says whether the MPO settings it timed are those of the page's MPO runs.
    """
    rows = []
    for env, algos in results.items():
        mpo_runs = {algo: runs for algo, runs in algos.items() if trained_algorithm(runs[0]) == "mpo"}
        for path in sorted((results_dir / QUIET_SPEED_FOLDER).glob(f"{env}_*.json")):
            record = json.loads(path.read_text())
            medians = record["medians"]
            load = record.get("load_average")
            cells = [
                env,
                record["commit"],
                quiet_settings(record, mpo_runs),
                record.get("mpo_target_dtype", "float32"),
                f"{load[0]:.1f}-{load[1]:.1f}" if load else "—",
                *(f"{medians[algo][key]:.1f}" for key in SPEED_KEYS for algo in ("mpo", "sac")),
            ]
            rows.append(f"| {' | '.join(cells)} | {record['mpo_over_sac_wall_clock_per_env_step']:.2f} |")
    if not rows:
        return []
    return [
        "Alternating measurements (`python -m benchmarks.speed`: one process and one torch thread, MPO on its RL Zoo "
        "entry at the record's commit and SAC on its defaults alternating, so that both see the same load; (256, 256) "
        "networks and batch 256; medians of the repeats; the load is the machine's 1-minute load average during the "
        "measurement, — where not recorded; records before the entries' `auto` ran the target pass in float32). The "
        "MPO settings column says whether the entry timed is what this page's MPO runs trained with: where it is not, "
        "the row times another configuration than theirs:",
        "",
        "| environment | commit | MPO settings | MPO target pass | load | MPO env steps/s | SAC env steps/s "
        "| MPO gradient steps/s | SAC gradient steps/s | MPO / SAC time per env step |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def normalised_scores(
    results: Results, normalisation: ScoreReference | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """
    Final returns normalised per environment, as rliable's (runs x tasks) matrices: (return − low) / (high − low), with
    the reference's two returns, or else the lowest and highest final return of the aggregate's runs. An algorithm
    enters the aggregates only if it ran on every environment (so one run on fewer, e.g. a variant measured on one
    task, moves no score); it contributes as many runs as its smallest seed count.

    :param results: The runs, by environment and algorithm
    :param normalisation: Fixed reference returns for every environment (None: min-max over the aggregate's runs)
    :return: The score matrices by algorithm, and the environments (columns)
    """
    envs = list(results)
    algos = [
        algo for algo in dict.fromkeys(a for runs in results.values() for a in runs) if all(algo in results[e] for e in envs)
    ]
    n_runs = {algo: min(len(results[env][algo]) for env in envs) for algo in algos}
    scores = {}
    for algo in algos:
        columns = []
        for env in envs:
            if normalisation is None:  # over the runs that enter the aggregate, no other
                every_final = np.array(
                    [run["final_return"] for other in algos for run in results[env][other][: n_runs[other]]]
                )
                low, high = every_final.min(), every_final.max()
            else:
                low, high = normalisation.range_of(env)
            finals = np.array([run["final_return"] for run in results[env][algo][: n_runs[algo]]])
            columns.append((finals - low) / (high - low) if high > low else np.ones_like(finals))
        scores[algo] = np.stack(columns, axis=1)
    return scores, envs


def normalisation_phrase(envs: list[str], normalisation: ScoreReference | None) -> str:
    """
    :param envs: The aggregate's environments
    :param normalisation: The suite's fixed reference returns (None: min-max over the aggregate's runs)
    :return: What the aggregate's scores are, for the page
    """
    if normalisation is None:
        return "normalised final returns"
    ranges = "; ".join(f"{env} {' and '.join(f'{value:.1f}' for value in normalisation.range_of(env))}" for env in envs)
    return f"final returns normalised by {normalisation.description} ({ranges})"


def mpo_configurations(names: list[str], trains: dict[str, str]) -> list[str]:
    """
    :param names: Algorithms as a suite names them
    :param trains: A name -> the algorithm it trains (a variant's base; a plain algorithm's own name)
    :return: Those that train MPO (the algorithm itself or a variant of it), in their order
    """
    return [name for name in names if trains.get(name, name) == "mpo"]


def improvement_pairs(names: list[str], trains: dict[str, str], reference: str = "mpo") -> list[tuple[str, str]]:
    """
    The comparisons whose probability of improvement a page shows: every MPO run (the algorithm itself or a variant
    of it) against every baseline, and the suite's reference configuration (the shipped entry ``mpo``, unless the
    suite names another) against each other MPO configuration.

    :param names: The algorithms of the aggregate, as the suite names them
    :param trains: A name -> the algorithm it trains (a variant's base; a plain algorithm's own name)
    :param reference: The MPO configuration the others are compared with
    :return: (MPO's name, the other's name) pairs
    """
    mpo = mpo_configurations(names, trains)
    baselines = [name for name in names if name not in mpo]
    variants = [name for name in mpo if name != reference] if reference in mpo else []
    return [(first, second) for first in mpo for second in baselines] + [(reference, variant) for variant in variants]


def shared_task_comparisons(
    results: Results, in_aggregate: list[str], trains: dict[str, str], reference: str = "mpo"
) -> dict[tuple[str, str], tuple[list[str], np.ndarray, np.ndarray]]:
    """
    The comparisons of :func:`improvement_pairs` that the aggregate leaves out, because one side did not run on every
    environment (a baseline whose runs of one task are pending, a variant measured on one task), each over the
    environments both ran, with as many runs per environment as each side's smallest seed count there.

    :param results: The runs, by environment and algorithm
    :param in_aggregate: The algorithms in the aggregate (:func:`normalised_scores`)
    :param trains: A name -> the algorithm it trains, for the suite's variants
    :param reference: The MPO configuration the others are compared with (:func:`improvement_pairs`)
    :return: For each (MPO's name, the other's name): the shared environments and each side's (runs x environments)
        final returns; pairs that share no environment are left out
    """
    names = list(dict.fromkeys(algo for runs in results.values() for algo in runs))
    comparisons = {}
    for first, second in improvement_pairs(names, trains, reference):
        envs = [env for env in results if first in results[env] and second in results[env]]
        if envs and not (first in in_aggregate and second in in_aggregate):
            comparisons[first, second] = (envs, _finals(results, first, envs), _finals(results, second, envs))
    return comparisons


def _finals(results: Results, algo: str, envs: list[str]) -> np.ndarray:
    """:return: ``algo``'s final returns as a (runs x environments) matrix, its smallest seed count of rows"""
    n_runs = min(len(results[env][algo]) for env in envs)
    return np.array([[run["final_return"] for run in results[env][algo][:n_runs]] for env in envs]).T


def improvement_estimates(pairs: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> list[tuple[tuple[str, str], str]]:
    """
    rliable's probability of improvement of the first side of each pair over the second, with its bootstrap interval.

    :param pairs: (runs x tasks) score matrices of the two sides, by (first, second)
    :return: Each pair with its estimate as a page shows it
    """
    from rliable import metrics

    keys = {pair: ",".join(pair) for pair in pairs}
    probability, probability_interval = interval_estimates(
        {keys[pair]: matrices for pair, matrices in pairs.items()}, metrics.probability_of_improvement
    )
    estimates = []
    for pair, (mpo, baseline) in pairs.items():
        key = keys[pair]
        interval = probability_interval[key]
        low, high = interval[:, 0] if interval.ndim > 1 else interval
        # a baseline of one run per environment leaves only MPO's runs to resample: no interval of the comparison
        runs = min(len(mpo), len(baseline))
        estimates.append((pair, _point_and_interval(float(probability[key]), low, high, runs, digits=2)))
    return estimates


def shared_task_lines(results: Results, in_aggregate: list[str], trains: dict[str, str], reference: str = "mpo") -> list[str]:
    """
    The table of :func:`shared_task_comparisons`: the probability of improvement of MPO over each baseline the
    aggregate leaves out, over the environments both ran.

    :param results: The runs, by environment and algorithm
    :param in_aggregate: The algorithms in the aggregate (none where it could not be formed)
    :param trains: A name -> the algorithm it trains, for the suite's variants
    :param reference: The MPO configuration the others are compared with (:func:`improvement_pairs`)
    :return: The table's markdown lines (none where no such pair shares an environment)
    """
    partial = shared_task_comparisons(results, in_aggregate, trains, reference)
    if not partial:
        return []
    lines = [
        "",
        "Where one side of a comparison lacks an environment, over the environments both ran (final returns: the "
        "probability compares runs within each environment, so it needs no normalisation):",
        "",
        "| P(MPO > baseline) | environments | estimate [95% CI] |",
        "|---|---|---|",
    ]
    estimates = dict(improvement_estimates({pair: (mpo, other) for pair, (_, mpo, other) in partial.items()}))
    for (first, second), (envs, *_) in partial.items():
        lines.append(f"| {first.upper()} > {second.upper()} | {', '.join(envs)} | {estimates[first, second]} |")
    return lines


def aggregate_section(
    results: Results,
    figures: Path,
    relative: Callable[[Path], str],
    trains: dict[str, str] | None = None,
    reference: str = "mpo",
    normalisation: ScoreReference | None = None,
) -> list[str]:
    """
    The aggregate over the suite's environments (rliable): IQM of normalised final returns with bootstrap intervals,
    the probability of improvement of MPO's runs over the others (:func:`improvement_pairs`) and a performance profile.

    :param results: The runs, by environment and algorithm
    :param figures: Folder of the page's figures
    :param relative: A figure's path as the page links it
    :param trains: A name -> the algorithm it trains, for the suite's variants; a name not in it trains itself
    :param reference: The MPO configuration the others are compared with (:func:`improvement_pairs`)
    :param normalisation: The suite's fixed reference returns (None: min-max over the aggregate's runs)
    :return: The section's markdown lines
    """
    from rliable import library, plot_utils

    trains = trains or {}
    scores, envs = normalised_scores(results, normalisation)
    # shown without an aggregate too: MPO may share environments with a baseline whose other runs are pending
    shared = shared_task_lines(results, list(scores), trains, reference)
    if len(scores) < 2:
        return ["Aggregates need two algorithms that ran on every environment of the suite.", *shared]
    iqms = iqm_estimates(scores)
    lines = [
        f"Over {len(envs)} environment(s) ({', '.join(envs)}), {normalisation_phrase(envs, normalisation)}:",
        "",
        "| algorithm | runs per environment | IQM [95% CI] |",
        "|---|---|---|",
    ]
    for algo in scores:
        runs, most = scores[algo].shape[0], max(len(results[env][algo]) for env in envs)
        counted = f"{runs}" if most == runs else f"{runs} (its lowest seeds: up to {most} ran on an environment)"
        lines.append(f"| {algo.upper()} | {counted} | {_point_and_interval(*iqms[algo], runs, digits=2)} |")
    compared = improvement_pairs(list(scores), trains, reference)
    if compared:
        lines += ["", "| P(MPO > baseline) | estimate [95% CI] |", "|---|---|"]
        pairs = {(first, second): (scores[first], scores[second]) for first, second in compared}
        lines += [
            f"| {first.upper()} > {second.upper()} | {estimate} |"
            for (first, second), estimate in improvement_estimates(pairs)
        ]
    configurations = mpo_configurations(list(scores), trains)
    if len(configurations) > 1 and reference not in configurations:
        lines += [
            "",
            f"The MPO configurations ({', '.join(name.upper() for name in configurations)}) are not compared with each "
            f"other here: the suite names none of them as its reference (`reference:` in its file), the configuration "
            f"the others would be compared with.",
        ]
    lines += shared

    import matplotlib.pyplot as plt

    # fixed references may score runs below 0 or above 1: the profile spans them
    every_score = np.concatenate([score.ravel() for score in scores.values()])
    taus = np.linspace(min(0.0, every_score.min()), max(1.0, every_score.max()), 51)
    profiles, profile_intervals = {}, {}
    for algo, score in scores.items():  # each algorithm's band from its own seeded bootstrap, as for the intervals
        with _seeded_bootstrap():
            profile, profile_interval = library.create_performance_profile({algo: score}, taus, reps=BOOTSTRAP_REPS)
        profiles[algo], profile_intervals[algo] = profile[algo], profile_interval[algo]
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_utils.plot_performance_profiles(
        profiles, taus, performance_profile_cis=profile_intervals, ax=ax, xlabel=r"normalised final return $\tau$",
        colors={algo: f"C{index}" for index, algo in enumerate(scores)},
    )  # fmt: skip
    ax.legend(ax.get_lines()[: len(scores)], [algo.upper() for algo in scores], loc="lower left")
    path = figures / "performance_profile.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [*lines, "", f"![performance profile]({relative(path)})"]


def goal_section(
    results: Results, goal: Goal, envs: list[str], normalisation: ScoreReference | None, stored: int, planned: int
) -> list[str]:
    """
    The suite's goal judged from its stored runs (:func:`benchmarks.goal.judge_goal`): each criterion with both sides'
    numbers and whether it is met, then the verdict of the goal and of its stretch goal. The IQMs are those of the
    page's aggregate (:func:`aggregate_section`), where every one of ``envs`` has stored runs.

    :param results: The runs, by environment and algorithm
    :param goal: The suite's goal
    :param envs: The suite's environments
    :param normalisation: The suite's fixed reference returns (None: min-max over the aggregate's runs)
    :param stored: How many runs of the goal's algorithms are stored
    :param planned: How many the suite runs
    :return: The section's markdown lines
    """
    scores = normalised_scores(results, normalisation)[0] if all(env in results for env in envs) else {}
    iqms = iqm_estimates({algo: scores[algo] for algo in goal.algorithms() if algo in scores})
    shown: dict[str, str] = {}
    for algo, estimate in iqms.items():
        runs = scores[algo].shape[0]
        shown[algo] = f"{_point_and_interval(*estimate, runs, digits=2)} ({runs} run{'s' * (runs > 1)} per env)"
    means = {
        env: {algo: float(np.mean([run["final_return"] for run in runs])) for algo, runs in by_algo.items()}
        for env, by_algo in results.items()
    }
    criteria = judge_goal(goal, {algo: estimate[0] for algo, estimate in iqms.items()}, means, envs)

    def cell(criterion: Criterion, judged_side: bool) -> str:
        """A side's number: an IQM with its interval, or a mean (with the floor under the other's)."""
        value = criterion.value if judged_side else criterion.other
        if value is None:
            return "—"
        if criterion.aggregate:
            return shown[goal.algo if judged_side else criterion.against]
        return _fmt(value) + ("" if judged_side or criterion.bar is None else f" (floor {_fmt(criterion.bar)})")

    def outcome(met: bool | None, reason: str = "") -> str:
        """A verdict as the page words it."""
        return {True: "met", False: "not met", None: f"not judged: {reason}" if reason else "undecided"}[met]

    goal_criteria = [criterion for criterion in criteria if not criterion.stretch]
    stretch_criteria = [criterion for criterion in criteria if criterion.stretch]
    return [
        f"The suite's goal for `{goal.algo}` (`goal:` in its file), judged from the stored runs "
        f"({stored} of {planned} runs of the algorithms it reads"
        + ("; the verdict may change as the others land)" if stored < planned else ")")
        + ". An IQM is the aggregate's (below: normalised final returns, each algorithm's runs per environment as many as "
        "on its least-run one), compared by its point estimate; a mean is over an environment's stored seeds.",
        "",
        f"| criterion | {goal.algo.upper()} | other | verdict |",
        "|---|---|---|---|",
        *(
            f"| {'stretch: ' if criterion.stretch else ''}{criterion.description} | {cell(criterion, True)} "
            f"| {cell(criterion, False)} | {outcome(criterion.met, criterion.reason)} |"
            for criterion in criteria
        ),
        "",
        f"Goal: **{outcome(verdict(goal_criteria))}**."
        + (f" Stretch goal: **{outcome(verdict(stretch_criteria))}**." if stretch_criteria else ""),
    ]


def shared_grid(runs: list[dict[str, Any]]) -> tuple[tuple[int, ...], list[list[dict[str, Any]]]]:
    """
    :param runs: Runs of one algorithm on one environment
    :return: The evaluation steps that most of them share (the first run's on a tie) and the curves of the runs
        evaluated at exactly those steps, which a figure can average point by point
    """
    grids = [tuple(point["step"] for point in run["curve"]) for run in runs]
    grid = max(dict.fromkeys(grids), key=grids.count)
    return grid, [run["curve"] for run, own in zip(runs, grids, strict=True) if own == grid]


def curve_figure(env: str, runs_by_algo: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Mean ± std over seeds of the evaluation return; on-policy baselines' longer budgets in a second panel."""
    import matplotlib.pyplot as plt

    budget = min(runs[0]["steps"] for runs in runs_by_algo.values())
    longer = any(runs[0]["steps"] > budget for runs in runs_by_algo.values())
    fig, axes = plt.subplots(1, 2 if longer else 1, figsize=(11 if longer else 6, 4), squeeze=False)
    for ax, limit in zip(axes[0], (budget, None), strict=False):
        for algo, runs in runs_by_algo.items():
            grid, curves = shared_grid(runs)
            steps, means = np.array(grid), np.array([[point["mean"] for point in curve] for curve in curves])
            keep = steps <= limit if limit is not None else np.ones_like(steps, dtype=bool)
            if not keep.any():
                continue
            mean, std = means.mean(axis=0)[keep], means.std(axis=0)[keep]
            seeds = f"{len(means)} seed{'s' if len(means) > 1 else ''}"
            if len(means) < len(runs):
                seeds += f" of {len(runs)}, evaluated at the same steps"
            ax.plot(steps[keep], mean, label=f"{algo.upper()} ({seeds})")
            ax.fill_between(steps[keep], mean - std, mean + std, alpha=0.2)
        ax.set_xlabel("environment steps")
        ax.set_ylabel("evaluation return")
        ax.set_title(f"{env}" + (f", first {budget:,} steps" if longer and limit else ", full budgets" if longer else ""))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: What training logged that a page plots over the run, one panel each where a run recorded it: key -> (axis label,
#: whether on a log scale)
TRAINING_PANELS = {
    "train/std_mean": ("MPO's policy std (mean)", False),
    "train/alpha_mean": ("the mean's multiplier α_μ", True),
    "train/alpha_std": ("the std's multiplier α_Σ", True),
    "train/temperature": ("MPO's temperature η", True),
    "train/ent_coef": ("entropy coefficient (SAC, TQC, CrossQ)", True),
}
#: Panels per row of that figure
TRAINING_COLUMNS = 3


def training_series(run: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray]:
    """
    :param run: A stored result
    :param key: A quantity that ``train()`` logs
    :return: The evaluation steps whose record holds ``key`` (what training logged last before that evaluation), and its
        values there
    """
    points = [(point["step"], point["train"][key]) for point in run["curve"] if key in (point.get("train") or {})]
    steps, values = zip(*points, strict=True) if points else ((), ())
    return np.array(steps, dtype=float), np.array(values, dtype=float)


def training_figure(env: str, runs_by_algo: dict[str, list[dict[str, Any]]], path: Path) -> list[str]:
    """
    What training logged before each evaluation, one line per run and one colour per algorithm, a panel for each of
    :data:`TRAINING_PANELS` that some run recorded; no figure where none did.

    :return: The keys plotted, in the panels' order
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    # per panel, per algorithm, the series of the runs that logged it
    logged = {
        key: {
            algo: [series for series in (training_series(run, key) for run in runs) if series[0].size]
            for algo, runs in runs_by_algo.items()
        }
        for key in TRAINING_PANELS
    }
    keys = [key for key, by_algo in logged.items() if any(by_algo.values())]
    if not keys:
        return []
    columns = min(len(keys), TRAINING_COLUMNS)
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys, strict=False):
        label, log = TRAINING_PANELS[key]
        for index, (algo, drawn) in enumerate(logged[key].items()):
            for number, (steps, values) in enumerate(drawn):
                name = f"{algo.upper()} ({len(drawn)} seed{'s' if len(drawn) > 1 else ''})" if number == 0 else None
                ax.plot(steps, values, color=colours[index % len(colours)], linewidth=1, label=name)
        ax.set_yscale("log" if log else "linear")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda step, _: f"{step / 1000:.0f}k"))
        ax.set_xlabel("environment steps")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{env}: what training logged before each evaluation", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return keys


def library_versions_line(runs: list[dict[str, Any]]) -> str:
    """
    Every library the runs recorded, with each version seen among them (``a / b`` where runs differ, ``not recorded``
    for runs that predate a library's entry), so that a suite trained across upgrades says so.
    """
    names = list(dict.fromkeys(name for run in runs for name in run["versions"]))
    if not names:
        return "—"
    versions = ({run["versions"].get(name, "not recorded") for run in runs} for name in names)
    return ", ".join(f"{name} {' / '.join(sorted(seen))}" for name, seen in zip(names, versions, strict=True))


def stored_settings_groups(runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """
    :param runs: Runs of one algorithm on one environment
    :return: The runs grouped by the settings their files store (``hyperparams``), in order of first appearance
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run["hyperparams"], sort_keys=True), []).append(run)
    return list(groups.values())


def settings_row(env: str, algo: str, runs: list[dict[str, Any]], seeds: str) -> str:
    """
    :param env: The environment
    :param algo: The algorithm's name in the suite
    :param runs: Runs of it that stored the same settings
    :param seeds: What follows the algorithm's name (the seeds, where its runs fall in several groups)
    :return: The row of the settings table: what the runs trained with, as their files record it
    """
    settings = ", ".join(f"{key}={value}" for key, value in sorted(runs[0]["hyperparams"].items()))
    overrides = f" (suite overrides: {', '.join(runs[0]['overrides'])})" if runs[0].get("overrides") else ""
    # Recorded since Retrace became MPO's default, so that a default critic target is visible too
    targets = sorted({run["critic_target"] for run in runs if run.get("critic_target")})
    settings += f"; critic target as trained: {' / '.join(targets)}" if targets else ""
    # Recorded since target_precision="auto" exists: the type the target pass computed in on the run's machine
    dtypes = sorted({run["target_dtype"] for run in runs if run.get("target_dtype")})
    settings += f"; target pass in {' / '.join(dtypes)}" if dtypes else ""
    return f"| {env} | {algo.upper()}{seeds} | {runs[0]['hyperparams_source']}{overrides} | {settings} |"


def settings_section(results: Results) -> list[str]:
    """
    The settings table: one row per algorithm and environment, or, where the runs of one algorithm on one environment
    stored different settings (:func:`stored_settings_groups`), one per setting with its seeds, and a note saying so.

    :param results: The runs, by environment and algorithm
    :return: The table's markdown lines
    """
    lines = ["| environment | algorithm | source | hyperparameters (after the suite's overrides) |", "|---|---|---|---|"]
    mixed = []
    for env, runs_by_algo in results.items():
        for algo, runs in runs_by_algo.items():
            groups = stored_settings_groups(runs)
            for group in groups:
                seeds = f" (seeds {', '.join(str(run['seed']) for run in group)})" if len(groups) > 1 else ""
                lines.append(settings_row(env, algo, group, seeds))
            if len(groups) > 1:
                mixed.append(f"{algo.upper()} on {env}")
    if mixed:
        lines += [
            "",
            f"Stored settings that differ from seed to seed: {', '.join(mixed)} (one row per setting above; a setting "
            "a row does not name was the default of its runs' commit). The tables and figures pool their seeds. "
            "`python -m benchmarks status SUITE` says which runs differ from the suite's current settings.",
        ]
    return lines


def write_report(suite: Suite, results_dir: Path, out: Path, figures: Path, reading: Path | None = None) -> None:
    """
    Generate the suite's page and figures from its stored result files.

    :param suite: The suite
    :param results_dir: The result store
    :param out: The markdown page to write
    :param figures: Folder of the PNG files (a subfolder per suite is created)
    :param reading: Markdown with the maintainers' reading of the results; default ``<suite file>.reading.md``
    """
    import matplotlib

    matplotlib.use("Agg")
    with warnings.catch_warnings():
        # rliable passes arch a RandomState the old way (arch 7 warns); the intervals are the same
        warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
        _write_report(suite, results_dir, out, figures, reading)


def provenance_lines(
    suite: Suite, title: str, every_run: list[dict[str, Any]], missing: list[str], problems: list[str]
) -> list[str]:
    """
    The head of a suite's page: its title, where it is generated from, its description, and what its stored runs say
    of themselves (how many, the machines, the commits, the libraries).

    :param title: What the page calls the suite (``"Benchmark suite"``, ``"Exploration suite"``)
    """
    return [
        f"# {title} `{suite.name}`",
        "",
        "<!-- Generated by `python -m benchmarks report "
        f"{suite.name}` from the files under benchmarks/results/{suite.name}/; do not edit by hand. -->",
        "",
        suite.description.strip(),
        "",
        f"- Runs stored: {len(every_run)} of {len(suite.jobs)}"
        + (f"; not finished yet: {len(missing)}" if missing else "")
        + (f"; unusable files skipped: {len(problems)}" if problems else ""),
        f"- Machines: {', '.join(sorted(recorded_over_legs(every_run, 'machine'))) or '—'}",
        f"- Commits: {', '.join(sorted(recorded_over_legs(every_run, 'commit'))) or '—'}",
        f"- Libraries: {library_versions_line(every_run)}",
    ]


def recorded_over_legs(runs: list[dict[str, Any]], key: str) -> set[str]:
    """:return: The values of ``key`` (a commit, a machine) recorded by any leg of ``runs`` (:func:`legs`), resumes and
    the shorter runs they continue included"""
    return {str(leg[key]) for run in runs for leg in legs(run) if leg.get(key) is not None}


def reading_section(suite: Suite, reading: Path | None) -> list[str]:
    """The maintainers' reading (default: the suite's ``.reading.md`` beside its YAML file), if there is one."""
    reading = reading or suite.path.with_suffix(".reading.md")
    return ["## Reading", "", reading.read_text().strip(), ""] if reading.is_file() else []


def warnings_section(every_run: list[dict[str, Any]]) -> list[str]:
    """
    The warnings the runs gave while training (MPO's health checks, a library's), each run's distinct ones with the env
    step of the first; nothing where no stored run kept them (runs kept them from the first result with ``warnings``).
    """
    recorded = [run for run in every_run if "warnings" in run]
    if not recorded:
        return []
    lines = [
        "## Warnings while training",
        "",
        f"{len(recorded)} of {len(every_run)} runs kept the warnings they gave while training (each distinct one once, at "
        "the env step of its first; a resumed run gives a health check's warning again); "
        f"{sum(1 for run in recorded if run['warnings'])} gave at least one.",
        "",
    ]
    for run in recorded:
        for warning in run["warnings"]:
            text = " ".join(warning["message"].split())
            lines.append(
                f"- `{run['algo']}` {run['env']} seed {run['seed']}, step {warning['step']} ({warning['category']}): {text}"
            )
    return [*lines, ""]


def unusable_section(problems: list[str]) -> list[str]:
    """The result files that were skipped, and why."""
    return ["## Unusable result files (skipped)", "", *[f"- {problem}" for problem in problems], ""] if problems else []


def _write_report(suite: Suite, results_dir: Path, out: Path, figures: Path, reading: Path | None) -> None:
    results, problems, missing = collect(suite, results_dir)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    figures = figures / suite.name
    figures.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)

    def relative(path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), out.parent.resolve())).as_posix()

    every_run = [run for runs_by_algo in results.values() for runs in runs_by_algo.values() for run in runs]
    lines = [
        *provenance_lines(suite, "Benchmark suite", every_run, missing, problems),
        f"- Evaluation: deterministic policy, {suite.jobs[0].eval_episodes} episodes on a separate environment "
        "(seeded 10000 + seed), every eval_freq steps; the final return is the last evaluation. `mean ± std` is over seeds, "
        "with the population standard deviation (divided by the number of seeds).",
        "- Budget multipliers: "
        + (", ".join(f"{algo.upper()} x{factor}" for algo, factor in suite.budget_multiplier.items()) or "none"),
        "- Settings: each baseline uses RL Zoo's tuned entry (rl_zoo3's files) and MPO sb3-mpo's entry, through rl_zoo3's "
        "experiment manager; the full list is at the end of the page.",
    ]
    for key, disclosure in RUN_DISCLOSURES.items():
        count = sum(1 for run in every_run if run.get(key))
        if count:
            lines.append(f"- {disclosure}: {count} of {len(every_run)} runs (`{key}`).")
    lines.append("")
    if suite.goal is not None and results:
        goal = suite.goal
        stored = sum(len(runs) for by_algo in results.values() for algo, runs in by_algo.items() if algo in goal.algorithms())
        planned = sum(1 for job in suite.jobs if job.algo in goal.algorithms())
        section = goal_section(results, goal, suite.envs(), suite.normalisation, stored, planned)
        lines += ["## Goal", "", *section, ""]
    lines += reading_section(suite, reading)
    for env, runs_by_algo in results.items():
        figure = figures / f"{env}.png"
        curve_figure(env, runs_by_algo, figure)
        lines += [f"## {env}", "", *env_table(runs_by_algo), ""]
        lines += [
            "One evaluation swings with the policy of that moment; the curves' last evaluations and their whole span, "
            "and where the runs recorded them the training episodes of the last windows (the behaviour policy, exploring), "
            "means over the seeds that have them:",
            "",
            *curve_summary_table(runs_by_algo),
            "",
        ]
        tables = (
            diagnostics_table(runs_by_algo),
            excursions_table(runs_by_algo),
            falls_table(runs_by_algo),
            paired_table(runs_by_algo),
        )
        for table in tables:
            lines += [*table, ""] if table else []
        if env in suite.thresholds:
            lines += [*threshold_table(runs_by_algo, suite.thresholds[env]), ""]
        lines += [f"![{env} learning curves]({relative(figure)})", ""]
        diagnostics = figures / f"{env}_training.png"
        if training_figure(env, runs_by_algo, diagnostics):
            lines += [
                "What training logged last before each evaluation, one line per run (the multipliers, the temperature and "
                "the entropy coefficient on log scales):",
                "",
                f"![{env} training diagnostics]({relative(diagnostics)})",
                "",
            ]
        else:
            diagnostics.unlink(missing_ok=True)
    if results:
        aggregate = aggregate_section(results, figures, relative, suite.trains(), suite.reference, suite.normalisation)
        lines += ["## Aggregate over environments", "", *aggregate, ""]
        efficiency = sample_efficiency_table(results)
        if efficiency:
            lines += ["## Sample efficiency: MPO at N steps vs on-policy baselines", "", *efficiency, ""]
        lines += ["## Speed", "", SPEED_NOTE, ""]
        lines += [*speed_table(results), ""]
        quiet = quiet_speed_table(results, results_dir)
        lines += [*quiet, ""] if quiet else []
        lines += ["## Settings", "", *settings_section(results), ""]
    lines += warnings_section(every_run)
    lines += unusable_section(problems)
    out.write_text("\n".join(lines))
