"""The benchmark runner (local processes and Ray), its result store and the rliable report, on a tiny suite."""

import dataclasses
import json
import os
import re
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import pytest
import torch as th
import yaml
from stable_baselines3.common import callbacks

from benchmarks import stamp
from benchmarks.cli import main
from benchmarks.exploration import run_exploration_job
from benchmarks.references import D4RL, ScoreReference
from benchmarks.report import (
    QUIET_SPEED_FOLDER,
    aggregate_section,
    collect,
    curve_summary_table,
    excursions_table,
    falls_table,
    improvement_estimates,
    improvement_pairs,
    interval_counts,
    interval_estimates,
    iqm_interval,
    largest_fall,
    late_return,
    late_training_return,
    library_versions_line,
    mean_over_run,
    normalised_scores,
    paired_table,
    processor,
    quiet_settings,
    recorded_over_legs,
    shared_grid,
    shared_task_comparisons,
    speed_group,
    training_figure,
    training_series,
    within_budget,
)
from benchmarks.results import (
    TRAINING_RETURN,
    ResultError,
    changed_settings,
    describe_changes,
    load_result,
    pace_key,
    paces,
    rough_pace,
    trained_algorithm,
    trained_threads,
    write_result,
)
from benchmarks.reward_scale import within_unit_scale
from benchmarks.standings import (
    BEGIN,
    END,
    MIXED_NOTE,
    README,
    UNEQUAL,
    UNEQUAL_NOTE,
    Row,
    load_rows,
    replace_block,
    standings_line,
    standings_table,
)
from benchmarks.suite import RESULTS_DIR, SUITES_DIR, Job, load_suite
from benchmarks.training import run_job
from benchmarks.zoo import algorithm_defaults, zoo_settings
from sb3_mpo.common.precision import dtype_name, target_dtype

#: What the Pendulum-v1 entry's target_precision="auto" resolves to on this machine's CPU
PENDULUM_TARGET_DTYPE = dtype_name(target_dtype("auto", th.device("cpu")))

TINY = {
    "name": "tiny",
    "description": "Test suite.",
    "eval_episodes": 2,
    "envs": {
        "Pendulum-v1": {
            "steps": 200,
            "eval_freq": 100,
            "threshold": -1e6,  # every evaluation reaches it
            "seeds": [0, 1],
            "algos": ["mpo", "sac"],
            "hyperparams": {
                "mpo": {
                    "learning_starts": 100,
                    "batch_size": 16,
                    "n_action_samples": 4,
                    "policy_kwargs": "dict(net_arch=[8])",
                },
                "sac": {"learning_starts": 100, "batch_size": 16, "policy_kwargs": "dict(net_arch=[8])"},
            },
        }
    },
}


def write_suite(folder: Path, spec: dict) -> Path:
    path = folder / f"{spec['name']}.yml"
    path.write_text(yaml.safe_dump(spec))
    return path


def result_files(results: Path) -> dict[str, float]:
    return {path.name: path.stat().st_mtime_ns for path in sorted(results.rglob("*.json"))}


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """The tiny suite run once through the local backend (two worker processes)."""
    folder = tmp_path_factory.mktemp("local")
    suite = write_suite(folder, TINY)
    assert main(["run", str(suite), "--results", str(folder / "results"), "--workers", "2"]) == 0
    return suite, folder / "results"


def test_local_backend_writes_one_valid_file_per_run(local_store):
    suite_path, results = local_store
    suite = load_suite(suite_path)
    assert len(suite.jobs) == 4
    for job in suite.jobs:
        result = load_result(job.result_path(results), job)
        assert [point["step"] for point in result["curve"]] == [100, 200]
        assert all(len(point["returns"]) == 2 for point in result["curve"])
        assert all(point["lengths"] == [200, 200] for point in result["curve"])  # Pendulum-v1 ends every episode at 200
        assert result["final_return"] == result["curve"][-1]["mean"]
        # each evaluation keeps what training logged last: nothing before the first update (learning_starts=100),
        # then the algorithm's own numbers (MPO's temperature and KL, SAC's entropy coefficient), counting its updates
        first, last = (point["train"] for point in result["curve"])
        assert first == {}
        mpo_keys = {"train/temperature", "train/kl_q", "train/std_mean", "train/q_mean"}
        own = mpo_keys if job.algo == "mpo" else {"train/ent_coef"}
        assert own <= set(last) and last["train/n_updates"] == result["n_updates"] - 1
        # and the first training episode, which ended at step 200 (Pendulum-v1's 200-step episodes), by its return
        assert TRAINING_RETURN in last and -2000 < last[TRAINING_RETURN] < 0
        assert all(np.isfinite(value) for value in last.values())
        assert result["env_steps_per_second"] > 0 and result["gradient_steps_per_second"] > 0
        assert result["hyperparams"]["policy_kwargs"] == repr("dict(net_arch=[8])")
        assert (result["net_arch"], result["batch_size"]) == ("[8]", 16)  # what the model actually used
        # MPO's critic target as trained: the Pendulum-v1 entry's 5-step returns; nothing for SAC
        assert result["critic_target"] == ("n_step (n_steps=5)" if job.algo == "mpo" else None)
        # and the type of its target pass: the Pendulum-v1 entry's "auto", resolved on this machine
        assert result["target_dtype"] == (PENDULUM_TARGET_DTYPE if job.algo == "mpo" else None)
        assert result["commit"] != "" and result["versions"]["stable_baselines3"]
        assert result["torch_threads"] == 1  # the runner's default
        # the simulator's version is recorded too (a MuJoCo release can move the numbers); the tests install MuJoCo
        assert result["versions"]["mujoco"] == mujoco.__version__
        assert not list(results.rglob("*.tmp")), "a temporary file was left behind"


def test_rerun_skips_finished_runs(local_store, capsys):
    suite_path, results = local_store
    before = result_files(results)
    assert main(["run", str(suite_path), "--results", str(results)]) == 0
    assert "4 finished, 0 to run" in capsys.readouterr().out
    assert result_files(results) == before


def test_ray_backend_matches_local_results(local_store, tmp_path):
    """The same seeds through a local Ray instance give the same evaluation returns, in the same kind of store."""
    pytest.importorskip("ray")
    suite_path, local_results = local_store
    ray_results = tmp_path / "ray_results"
    assert main(["run", str(suite_path), "--results", str(ray_results), "--ray-address", "local", "--seeds", "1"]) == 0
    suite = load_suite(suite_path)
    jobs = [job for job in suite.jobs if job.seed == 1]
    assert sorted(result_files(ray_results)) == sorted(job.result_path(ray_results).name for job in jobs)
    for job in jobs:
        from_ray, from_local = load_result(job.result_path(ray_results), job), load_result(job.result_path(local_results), job)
        assert from_ray["curve"] == from_local["curve"]


def test_report_renders_tables_and_plots(local_store, tmp_path):
    suite_path, results = local_store
    out = tmp_path / "docs" / "tiny.md"
    assert (
        main(["report", str(suite_path), "--results", str(results), "--out", str(out), "--figures", str(tmp_path / "fig")])
        == 0
    )
    page = out.read_text()
    assert "| MPO | 200 | 2 |" in page and "| SAC | 200 | 2 |" in page
    assert "IQM [95% CI]" in page
    assert re.search(r"^\| MPO > SAC \| \d\.\d\d \[\d\.\d\d, \d\.\d\d\] \|$", page, flags=re.MULTILINE)  # two runs each
    assert "| MPO | 2 / 2 | 100, 100 | 2 / 2 |" in page  # the threshold table: first evaluation, every seed
    # the settings of MPO's runs; none for SAC's
    assert f"; critic target as trained: n_step (n_steps=5); target pass in {PENDULUM_TARGET_DTYPE} |" in page
    assert page.count("critic target as trained") == 1
    # what training logged before the final evaluation, medians over seeds; "—" where an algorithm logs no such number
    columns = (
        "MPO's temperature η | KL(q ‖ π_old) | the mean's multiplier α_μ | policy std (mean) | policy means outside the box | "
        "Q (mean) | SAC's entropy coefficient | critic loss | training episodes' return"
    )
    assert f"| algorithm | seeds | {columns} |" in page
    assert "(what `train()` logged last, and the return of the training episodes since the evaluation before; " in page
    finals = {
        algo: [
            load_result(job.result_path(results), job)["curve"][-1]["train"]
            for job in load_suite(suite_path).jobs
            if job.algo == algo
        ]
        for algo in ("mpo", "sac")
    }
    temperature = np.median([logged["train/temperature"] for logged in finals["mpo"]])
    entropy_coefficient = np.median([logged["train/ent_coef"] for logged in finals["sac"]])
    assert f"| MPO | 2 | {temperature:.3g} | " in page
    # the median return of the training episodes before the final evaluation: the last column, SAC's own
    training_return = re.escape(f"{np.median([logged[TRAINING_RETURN] for logged in finals['sac']]):.3g}")
    assert re.search(
        rf"^\| SAC \| 2 \| — \| — \| — \| — \| — \| — \| {entropy_coefficient:.3g} \| [^|]+ \| {training_return} \|$",
        page,
        flags=re.MULTILINE,
    )
    # the curves' last evaluations and their whole span, and the training episodes' late return, beside the final return
    summary = "| algorithm | seeds | mean of the last 3 evaluations | per seed | mean over the run's evaluations | per seed |"
    assert f"{summary} training episodes' return, last 3 windows | per seed |" in page
    for figure in ("Pendulum-v1.png", "Pendulum-v1_training.png", "performance_profile.png"):
        path = tmp_path / "fig" / "tiny" / figure
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"../fig/tiny/{figure}" in page


def test_report_judges_the_suites_goal_above_the_reading(local_store, tmp_path):
    """The goal's section sits between the page's head and its reading, judged from the stored runs."""
    suite_path, results = local_store
    goal_suite = write_suite(tmp_path, {**TINY, "goal": {"at_or_above": ["sac"]}})
    goal_suite.with_suffix(".reading.md").write_text("The reading.")
    out = tmp_path / "tiny.md"
    assert main(["report", str(goal_suite), "--results", str(results), "--out", str(out), "--figures", str(tmp_path)]) == 0
    page = out.read_text()
    assert page.index("## Goal") < page.index("## Reading") < page.index("## Pendulum-v1")
    finals = {
        algo: [
            load_result(job.result_path(results), job)["final_return"]
            for job in load_suite(suite_path).jobs
            if job.algo == algo
        ]
        for algo in ("mpo", "sac")
    }
    # one environment, two runs each: min-max scores are one affine map of the returns, and an IQM of two is their mean
    met = np.mean(finals["mpo"]) >= np.mean(finals["sac"])
    row = re.search(
        r"^\| IQM at or above SAC's \| ([^|]+) \(2 runs per env\) \| ([^|]+) \(2 runs per env\) \| (.+) \|$",
        page,
        re.MULTILINE,
    )
    assert row is not None and row[3] == ("met" if met else "not met")
    aggregate = {algo: re.search(rf"^\| {algo} \| 2 \| ([^|]+) \|$", page, re.MULTILINE) for algo in ("MPO", "SAC")}
    assert (row[1], row[2]) == (aggregate["MPO"][1].strip(), aggregate["SAC"][1].strip())  # the aggregate table's IQMs
    assert f"Goal: **{'met' if met else 'not met'}**." in page
    assert "(4 of 4 runs of the algorithms it reads)" in page
    partial = copy_store(results, tmp_path / "partial")  # one of SAC's runs missing: the count says so
    next(path for path in partial.rglob("sac_*seed1*.json")).unlink()
    assert main(["report", str(goal_suite), "--results", str(partial), "--out", str(out), "--figures", str(tmp_path)]) == 0
    assert "(3 of 4 runs of the algorithms it reads; the verdict may change as the others land)" in out.read_text()
    plain = tmp_path / "plain.md"  # the suite without a goal: no such section
    assert main(["report", str(suite_path), "--results", str(results), "--out", str(plain), "--figures", str(tmp_path)]) == 0
    assert "## Goal" not in plain.read_text()


def copy_store(results: Path, target: Path) -> Path:
    for path in results.rglob("*.json"):
        copy = target / path.relative_to(results)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    return target


def test_report_shows_quiet_speed_records_and_discloses_converted_and_resumed_runs(local_store, tmp_path):
    """benchmarks/speed.py's records for the suite's environments are listed; converted and resumed runs are said to be so."""
    suite_path, results = local_store
    store = copy_store(results, tmp_path / "results")
    jobs = load_suite(suite_path).jobs
    for job, disclosed in ((jobs[0], {"migrated_from": "old/file.json"}), (jobs[1], {"resumes": [{"step": 100}]})):
        path = job.result_path(store)
        path.write_text(json.dumps({**json.loads(path.read_text()), **disclosed}))
    medians = {
        "mpo": {"env_steps_per_second": 40.0, "gradient_steps_per_second": 41.0},
        "sac": {"env_steps_per_second": 60.0, "gradient_steps_per_second": 62.0},
    }
    speed = {"env": "Pendulum-v1", "commit": "abc1234", "medians": medians, "mpo_over_sac_wall_clock_per_env_step": 1.5}
    (store / QUIET_SPEED_FOLDER).mkdir()
    (store / QUIET_SPEED_FOLDER / "Pendulum-v1_abc1234.json").write_text(json.dumps(speed))
    (store / QUIET_SPEED_FOLDER / "Hopper-v5_abc1234.json").write_text(json.dumps({**speed, "env": "Hopper-v5"}))
    newer = {**speed, "commit": "def5678", "mpo_target_dtype": "bfloat16", "load_average": [0.96, 2.14]}
    (store / QUIET_SPEED_FOLDER / "Pendulum-v1_def5678.json").write_text(json.dumps(newer))
    mpo_settings = load_result(jobs[0].result_path(store), jobs[0])["hyperparams"]
    assert jobs[0].algo == "mpo" and mpo_settings["batch_size"] == "16"
    # the settings timed: the page's MPO runs' (a default written out changes nothing), or others
    for commit, timed in (("0a0a0a0", {**mpo_settings, "tau": "0.005"}), ("0b0b0b0", {**mpo_settings, "batch_size": "256"})):
        record = {**newer, "commit": commit, "mpo_hyperparams": timed}
        (store / QUIET_SPEED_FOLDER / f"Pendulum-v1_{commit}.json").write_text(json.dumps(record))
    out = tmp_path / "page.md"
    assert main(["report", str(suite_path), "--results", str(store), "--out", str(out), "--figures", str(tmp_path)]) == 0
    page = out.read_text()
    # a record from before speed.py kept the target pass's type and the load: float32 (the only one then), load unknown;
    # nor did it keep the MPO settings it timed
    not_recorded = "its entry at that commit (not recorded)"
    assert f"| Pendulum-v1 | abc1234 | {not_recorded} | float32 | — | 40.0 | 60.0 | 41.0 | 62.0 | 1.50 |" in page
    assert f"| Pendulum-v1 | def5678 | {not_recorded} | bfloat16 | 1.0-2.1 | 40.0 | 60.0 | 41.0 | 62.0 | 1.50 |" in page
    assert "| Pendulum-v1 | 0a0a0a0 | as `mpo` here | bfloat16 |" in page
    assert "| Pendulum-v1 | 0b0b0b0 | other than this page's MPO runs | bfloat16 |" in page
    assert quiet_settings({"mpo_hyperparams": timed}, {}) == "recorded; no MPO run on this page to compare"
    assert "Hopper-v5" not in page  # not an environment of the suite
    runs = len(jobs)
    assert "- Trained not through the experiment manager but by the retired `benchmarks/compare.py`" in page
    assert f"each names its original): 1 of {runs} runs (`migrated_from`)." in page
    assert "- Interrupted and resumed from a mid-run checkpoint (" in page
    assert f"each file lists where): 1 of {runs} runs (`resumes`)." in page


def test_report_lists_the_warnings_that_runs_kept(local_store, tmp_path):
    """Runs that kept their warnings are counted, those that gave some list them; files from before say nothing."""
    suite_path, results = local_store
    store = copy_store(results, tmp_path / "results")
    jobs = load_suite(suite_path).jobs
    out = tmp_path / "page.md"
    report = ["report", str(suite_path), "--results", str(store), "--out", str(out), "--figures", str(tmp_path)]

    def store_warnings(job: Job, kept: list[dict] | None) -> None:
        path = job.result_path(store)
        record = {key: value for key, value in json.loads(path.read_text()).items() if key != "warnings"}
        path.write_text(json.dumps(record if kept is None else {**record, "warnings": kept}))

    for job in jobs:
        store_warnings(job, None)  # files written before runs kept their warnings
    assert main(report) == 0
    assert "## Warnings while training" not in out.read_text()
    store_warnings(jobs[0], [{"step": 7425, "category": "UserWarning", "message": "MPO: the M-step's KL\n reached 1.7"}])
    store_warnings(jobs[1], [])
    assert main(report) == 0
    page = out.read_text()
    assert f"2 of {len(jobs)} runs kept the warnings they gave while training" in page and "1 gave at least one." in page
    first = jobs[0]
    assert f"- `{first.algo}` {first.env} seed {first.seed}, step 7425 (UserWarning): MPO: the M-step's KL reached 1.7" in page


def test_excursions_are_listed_per_run_that_counted_them() -> None:
    """Each run's final counts, "—" for a constraint it does not have; runs from before the counts say nothing."""

    def run(seed: int, logged: dict[str, float]) -> dict[str, Any]:
        return {"seed": seed, "curve": [{"step": 10, "train": {"train/kl_q": 0.1}}, {"step": 20, "train": logged}]}

    counted = {"train/kl_mean_max_excursions": 3.0, "train/kl_std_max_excursions": 11.0}
    runs_by_algo = {"mpo": [run(0, counted), run(1, {"train/kl_q": 0.1})], "sac": [run(0, {"train/ent_coef": 0.1})]}
    lines = excursions_table(runs_by_algo)
    assert lines[2:] == [
        "| algorithm | seed | the mean's (epsilon_mean) | the std's (epsilon_std) |",
        "|---|---|---|---|",
        "| MPO | 0 | 3 | 11 |",
    ]
    discrete = {"mpo": [run(2, {"train/kl_policy_excursions": 0.0}), run(3, counted)]}
    assert excursions_table(discrete)[-2:] == ["| MPO | 2 | — | — | 0 |", "| MPO | 3 | 3 | 11 | — |"]
    # the largest call's KL in multiples of its bound, where the run logged it
    peaked = {**counted, "train/kl_std_max_peak_ratio": 1234.5, "train/kl_mean_max_peak_ratio": 12.0}
    assert excursions_table({"mpo": [run(4, peaked)]})[-1] == "| MPO | 4 | 3 (12x) | 11 (1.23e+03x) |"
    assert excursions_table({"mpo": [run(1, {"train/kl_q": 0.1})], "sac": runs_by_algo["sac"]}) == []


def test_paired_table_compares_the_two_readings_of_each_evaluated_policy() -> None:
    def point(step: int, mode: float, mean: float | None) -> dict:
        return {"step": step, "mean": mode, **({} if mean is None else {"mean_action": {"mean": mean}})}

    paired = {"seed": 1, "curve": [point(10, 100.0, None), point(20, 300.0, 350.0), point(30, 205.0, 3000.0)]}
    runs = {
        "mpo": [{"seed": 0, "curve": [point(10, 1.0, None)]}, paired],
        "sac": [{"seed": 0, "curve": [point(10, 5.0, None)]}],
    }
    lines = paired_table(runs)
    assert lines[-1] == "| MPO | 1 | 205 / 3000 | 252 / 1675 | 2 of 2 |"  # over the evaluations both scored
    assert len([line for line in lines if line.startswith("| MPO")]) == 1
    assert paired_table({"sac": runs["sac"]}) == []
    paired["curve"].append(point(40, 900.0, None))  # a last evaluation without its pair: its final reads "—"
    assert paired_table(runs)[-1] == "| MPO | 1 | 900 / — | 252 / 1675 | 2 of 2 |"


def test_falls_table_reads_each_intervals_excursions_from_the_running_totals() -> None:
    """
    Running totals logged at each evaluation become counts per interval; the largest fall is the largest drop between
    two evaluations, and its row shows the counts of the interval ending there and of the one before, and the median.
    """
    std, mean = "train/kl_std_max_excursions", "train/kl_mean_max_excursions"

    def run(seed: int, returns: list[float], logged: list[dict[str, float]]) -> dict[str, Any]:
        curve = [
            {"step": 1000 * (index + 1), "mean": value, "train": train}
            for index, (value, train) in enumerate(zip(returns, logged, strict=True))
        ]
        return {"seed": seed, "curve": curve}

    totals = [{}, {std: 4.0, mean: 1.0}, {std: 6.0, mean: 1.0}, {std: 16.0, mean: 3.0}, {std: 17.0, mean: 3.0}]
    counted = run(0, [10.0, 50.0, 80.0, 20.0, 30.0], totals)
    assert interval_counts(counted, std) == [0.0, 4.0, 2.0, 10.0, 1.0]
    # an interval without an update (updates less frequent than evaluations) logs nothing: the total holds
    assert interval_counts(run(3, [1.0] * 4, [{std: 4.0}, {}, {std: 5.0}, {}]), std) == [4.0, 0.0, 1.0, 0.0]
    assert largest_fall(counted) == 3
    assert largest_fall(run(1, [1.0, 2.0, 2.0], [{}] * 3)) is None
    resumed_uncounted = run(2, [10.0, 5.0, 7.0], [{"train/kl_q": 0.1}, {std: 2.0}, {std: 3.0}])
    assert interval_counts(resumed_uncounted, std) is None
    lines = falls_table({"mpo": [counted, resumed_uncounted], "sac": [run(0, [5.0, 1.0], [{"train/ent_coef": 0.1}] * 2)]})
    assert lines[2:] == [
        "| algorithm | seed | largest fall (env steps: evaluation returns) | the mean's (epsilon_mean) "
        "| the std's (epsilon_std) |",
        "|---|---|---|---|---|",
        "| MPO | 0 | 3,000 → 4,000: 80 → 20 | 2, 0 (median 0) | 10, 2 (median 2) |",
    ]
    assert falls_table({"mpo": [resumed_uncounted]}) == []


def test_report_gives_each_setting_its_own_row_when_seeds_trained_with_different_ones(local_store, tmp_path):
    """A suite half redone after its entry changed: the page says which seeds trained with which settings."""
    suite_path, results = local_store
    store = copy_store(results, tmp_path / "results")
    (older,) = [job for job in load_suite(suite_path).jobs if job.algo == "mpo" and job.seed == 1]
    path = older.result_path(store)
    record = json.loads(path.read_text())
    record["hyperparams"]["batch_size"] = "64"
    path.write_text(json.dumps(record))
    out = tmp_path / "page.md"
    assert main(["report", str(suite_path), "--results", str(store), "--out", str(out), "--figures", str(tmp_path)]) == 0
    page = out.read_text()
    assert re.search(r"^\| Pendulum-v1 \| MPO \(seeds 0\) \| .*batch_size=16,", page, flags=re.MULTILINE)
    assert re.search(r"^\| Pendulum-v1 \| MPO \(seeds 1\) \| .*batch_size=64,", page, flags=re.MULTILINE)
    assert re.search(r"^\| Pendulum-v1 \| SAC \| ", page, flags=re.MULTILINE), "SAC's seeds agree: one row"
    assert "Stored settings that differ from seed to seed: MPO on Pendulum-v1 (one row per setting above; " in page


def test_normalised_scores_span_the_aggregates_runs_only():
    """A variant run on one task of two stays out of the aggregate and moves no other algorithm's score."""

    def runs(*finals: float) -> list[dict]:
        return [{"final_return": final} for final in finals]

    results = {"A": {"mpo": runs(0.0, 10.0), "sac": runs(5.0, 20.0)}, "B": {"mpo": runs(1.0, 3.0), "sac": runs(2.0, 2.0)}}
    scores, envs = normalised_scores(results)
    assert envs == ["A", "B"] and list(scores) == ["mpo", "sac"]
    np.testing.assert_allclose(scores["mpo"], [[0.0, 0.0], [0.5, 1.0]])
    np.testing.assert_allclose(scores["sac"], [[0.25, 0.5], [1.0, 0.5]])
    with_variant, _ = normalised_scores({**results, "A": {**results["A"], "mpo_variant": runs(-100.0, 100.0)}})
    assert list(with_variant) == ["mpo", "sac"]
    for algo in scores:
        np.testing.assert_array_equal(with_variant[algo], scores[algo])
    # a third seed of SAC alone: the aggregate takes two runs of each, and the third moves no score either
    extra, _ = normalised_scores({"A": {"mpo": runs(0.0, 10.0), "sac": runs(5.0, 20.0, 1000.0)}, "B": results["B"]})
    for algo in scores:
        np.testing.assert_array_equal(extra[algo], scores[algo])


def test_an_evaluation_past_the_budget_is_left_out_and_the_last_within_it_is_final():
    """PPO with 16 environments: evaluations every 1562 vector steps (24,992, ...), then once more after the rollout
    that ended past 300,000: the page takes 299,904's, as it takes every other run's last evaluation within budget."""
    curve = [{"step": step, "mean": float(index)} for index, step in enumerate(range(24_992, 300_000, 24_992))]
    run = {"steps": 300_000, "curve": [*curve, {"step": 311_296, "mean": 99.0}], "final_return": 99.0}
    read = within_budget(run)
    assert read["final_return"] == curve[-1]["mean"] == 11.0 and read["curve"] == curve
    assert read["evaluated_past_budget"] == 311_296 and run["final_return"] == 99.0  # the stored record is untouched
    exact = {"steps": 300_000, "curve": [*curve, {"step": 300_000, "mean": 5.0}], "final_return": 5.0}
    assert within_budget(exact) is exact
    exploration = {"steps": 1000, "kind": "exploration"}  # no curve
    assert within_budget(exploration) is exploration


def test_a_resumed_run_whose_legs_trained_differently_gets_a_speed_row_of_its_own():
    """Its speed mixes its legs': one leg of 1 thread before a resume with 2 is no 2-thread run (nor a 1-thread one)."""
    amd, intel = "vm AMD EPYC 7B13 2 cores Linux", "vm Intel(R) Xeon(R) Processor 2 cores Linux"
    plain = {"machine": amd, "torch_threads": 1}
    assert speed_group(plain) == ("AMD EPYC 7B13", "1")
    same = {**plain, "resumes": [{"step": 5, "machine": amd, "torch_threads": 1, "before": dict(plain)}]}
    assert speed_group(same) == ("AMD EPYC 7B13", "1")
    threads = {"machine": amd, "torch_threads": 2, "resumes": [{"machine": amd, "torch_threads": 2, "before": plain}]}
    assert speed_group(threads) == ("AMD EPYC 7B13", "mixed: 1 / 2")
    moved = {"machine": intel, "torch_threads": 1, "resumes": [{"machine": intel, "torch_threads": 1, "before": plain}]}
    assert speed_group(moved) == ("mixed: AMD EPYC 7B13 / Intel(R) Xeon(R) Processor", "1")
    # a resume recorded before the runner kept each leg's machine: its thread count still tells, its processor does not
    older = {**plain, "resumes": [{"step": 5, "commit": "abc", "torch_threads": 2}]}
    assert speed_group(older) == ("AMD EPYC 7B13", "mixed: 1 / 2")
    assert speed_group({**plain, "resumes": [{"step": 5, "commit": "abc", "torch_threads": 1}]}) == ("AMD EPYC 7B13", "1")
    continued = {"machine": intel, "torch_threads": 2, "resumes": [], "continued_from": {"step": 9, **plain}}
    assert speed_group(continued) == ("mixed: AMD EPYC 7B13 / Intel(R) Xeon(R) Processor", "mixed: 1 / 2")


def test_the_commits_machines_and_threads_of_every_leg_of_a_run_are_read():
    """A run resumed or continued from a shorter one trained partly at other commits, on other machines: all are listed
    (a continued final state kept before legs were recorded says None: not recorded)."""
    run = {
        "machine": "vm Intel 2 cores Linux",
        "commit": "ccc3333",
        "torch_threads": 2,
        "resumes": [{"step": 5, "commit": "bbb2222", "machine": "vm Intel 2 cores Linux", "before": {"commit": "ddd4444"}}],
        "continued_from": {"step": 3, "commit": "aaa1111", "machine": "vm AMD 2 cores Linux"},
    }
    unrecorded = {**run, "continued_from": {"step": 3, "commit": None, "torch_threads": None}}
    assert recorded_over_legs([unrecorded], "commit") == {"bbb2222", "ccc3333", "ddd4444"}
    assert trained_threads(unrecorded) == 2 and speed_group(unrecorded)[1] == "2"
    many = {**run, "continued_from": {"step": 3, "torch_threads": 16}, "resumes": [{"step": 5, "torch_threads": 1}]}
    assert speed_group(many)[1] == "mixed: 1 / 2 / 16" and trained_threads(many) is None
    commits = recorded_over_legs([run, {"commit": "eee5555"}], "commit")
    assert commits == {"aaa1111", "bbb2222", "ccc3333", "ddd4444", "eee5555"}
    assert recorded_over_legs([run], "machine") == {"vm Intel 2 cores Linux", "vm AMD 2 cores Linux"}


def test_fixed_reference_returns_normalise_each_run_alone():
    """With a reference, a score is (return − low) / (high − low) of its own task, whatever else the page shows."""
    reference = ScoreReference("test", "two returns per task", {"A": (-10.0, 90.0), "B": (0.0, 4.0)})
    runs = {"mpo": [150.0, 40.0], "sac": [-10.0, 15.0]}
    results = {
        "A-v5": {algo: [{"final_return": final} for final in finals] for algo, finals in runs.items()},
        "B-v1": {algo: [{"final_return": final / 10} for final in finals] for algo, finals in runs.items()},
    }
    scores, envs = normalised_scores(results, reference)
    assert envs == ["A-v5", "B-v1"]
    np.testing.assert_allclose(scores["mpo"], [[1.6, 3.75], [0.5, 1.0]])  # a run may score above 1
    np.testing.assert_allclose(scores["sac"], [[0.0, -0.25], [0.25, 0.375]])  # or below 0
    # a worse algorithm joining the page moves no score (min-max over the page's runs would)
    joined = {env: {**algos, "td3": [{"final_return": -1000.0}] * 2} for env, algos in results.items()}
    assert np.array_equal(normalised_scores(joined, reference)[0]["mpo"], scores["mpo"])
    assert not np.array_equal(normalised_scores(joined)[0]["mpo"], normalised_scores(results)[0]["mpo"])
    with pytest.raises(ValueError, match=r"test has no reference returns for C-v0 \(it scores \['A', 'B'\]\)"):
        normalised_scores({"C-v0": results["A-v5"]}, reference)


def test_the_d4rl_reference_scores_mujoco_tasks_by_their_name_without_version(tmp_path):
    assert D4RL.range_of("HalfCheetah-v5") == D4RL.range_of("HalfCheetah-v4") == (-280.178953, 12135.0)
    assert D4RL.range_of("Walker2d-v5") == (1.629008, 4592.3) and D4RL.range_of("Hopper-v5") == (-20.272305, 3234.3)
    assert not D4RL.covers("Ant-v5") and not D4RL.covers("Humanoid-v5")
    env = {**TINY["envs"]["Pendulum-v1"], "algos": ["mpo", "sac"]}
    spec = {**TINY, "envs": {"HalfCheetah-v5": env}, "normalisation": "d4rl"}
    assert load_suite(write_suite(tmp_path, spec)).normalisation is D4RL
    assert load_suite(write_suite(tmp_path, {**spec, "normalisation": None})).normalisation is None
    with pytest.raises(ValueError, match=r"normalisation: d4rl has no reference returns for \['Pendulum-v1'\]"):
        load_suite(write_suite(tmp_path, {**spec, "envs": {"HalfCheetah-v5": env, "Pendulum-v1": env}}))
    with pytest.raises(ValueError, match=r"normalisation: must be one of \['d4rl'\], got 'atari'"):
        load_suite(write_suite(tmp_path, {**spec, "normalisation": "atari"}))


def test_the_aggregate_names_its_fixed_references_and_profiles_scores_beyond_one(tmp_path):
    results = {
        "Hopper-v5": {"mpo": [{"final_return": 3234.3 * 1.5}] * 2, "sac": [{"final_return": -20.272305}] * 2},
        "Walker2d-v5": {"mpo": [{"final_return": 4592.3}] * 2, "sac": [{"final_return": 1.629008}] * 2},
    }
    lines = aggregate_section(results, tmp_path, str, normalisation=D4RL)
    assert lines[0] == (
        "Over 2 environment(s) (Hopper-v5, Walker2d-v5), final returns normalised by D4RL's reference returns (Fu et al. "
        "2020): 0 is a uniformly random policy's return, 1 an expert SAC policy's (Hopper-v5 -20.3 and 3234.3; "
        "Walker2d-v5 1.6 and 4592.3):"
    )
    iqm = {line.split(" | ")[0]: line.split(" | ")[2] for line in lines if line.startswith(("| MPO |", "| SAC |"))}
    # Hopper: (1.5·3234.3 + 20.27) / 3254.57; Walker2d: 1.0; the IQM of two runs per task is their mean
    assert iqm["| MPO"].startswith(f"{(1.5 * 3234.3 + 20.272305) / (3234.3 + 20.272305) / 2 + 0.5:.2f}")
    assert iqm["| SAC"].startswith("0.00")
    assert (tmp_path / "performance_profile.png").is_file()


def test_probability_of_improvement_pairs_every_mpo_run_with_every_baseline():
    """A variant of MPO is compared with the baselines (a dev set's `mpo_ln` with SAC), never a baseline with another."""
    trains = {"mpo_ln": "mpo", "crossq_256": "crossq", "mpo_n10": "mpo"}
    assert improvement_pairs(["mpo_ln", "sac", "crossq_256"], trains) == [("mpo_ln", "sac"), ("mpo_ln", "crossq_256")]
    # the shipped entry is compared with the baselines and with each of its variants
    assert improvement_pairs(["mpo", "mpo_n10", "sac"], trains) == [("mpo", "sac"), ("mpo_n10", "sac"), ("mpo", "mpo_n10")]
    assert improvement_pairs(["mpo_ln", "mpo_n10"], trains) == []  # variants alone: nothing to compare with
    assert improvement_pairs(["sac", "td3"], {}) == []
    # a screen names the configuration it changes: that one is compared with each other MPO configuration
    assert improvement_pairs(["mpo_ln", "mpo_n10", "sac"], trains, reference="mpo_ln") == [
        ("mpo_ln", "sac"),
        ("mpo_n10", "sac"),
        ("mpo_ln", "mpo_n10"),
    ]
    assert improvement_pairs(["mpo_n10", "sac"], trains, reference="mpo_ln") == [("mpo_n10", "sac")]  # reference absent


def test_suite_reference_names_an_mpo_configuration_it_runs(tmp_path):
    variant = {"variants": {"mpo_small": {"algo": "mpo", "hyperparams": {"batch_size": 8}}}}
    env = {**TINY["envs"]["Pendulum-v1"], "algos": ["mpo", "mpo_small", "sac"]}
    spec = {**TINY, **variant, "envs": {"Pendulum-v1": env}}
    assert load_suite(write_suite(tmp_path, spec)).reference == "mpo"
    assert load_suite(write_suite(tmp_path, {**spec, "reference": "mpo_small"})).reference == "mpo_small"
    for name in ("sac", "mpo_large"):
        with pytest.raises(ValueError, match=rf"reference: must name an MPO configuration the suite runs, one of "
                           rf"\['mpo', 'mpo_small'\], got '{name}'"):  # fmt: skip
            load_suite(write_suite(tmp_path, {**spec, "reference": name}))


def test_comparisons_the_aggregate_leaves_out_are_made_over_the_shared_environments():
    """A baseline with a task pending is compared with MPO on the tasks both ran, by brute-force counting of wins."""

    def runs(*finals: float) -> list[dict]:
        return [{"final_return": final} for final in finals]

    results = {
        "A": {"mpo": runs(1.0, 3.0, 7.0), "sac": runs(2.0, 2.0, 2.0), "crossq": runs(0.0, 4.0), "mpo_ln": runs(5.0)},
        "B": {"mpo": runs(5.0, 6.0, 6.0), "sac": runs(1.0, 6.0, 9.0), "crossq": runs(6.0, 8.0, 2.0)},
        "C": {"mpo": runs(0.0, 1.0, 2.0), "sac": runs(3.0, 3.0, 3.0)},
    }
    scores, _ = normalised_scores(results)
    comparisons = shared_task_comparisons(results, list(scores), {"mpo_ln": "mpo"})
    # the pairs in the aggregate (MPO and SAC) are not repeated; a variant meets every baseline it shares a task with
    assert list(comparisons) == [("mpo", "crossq"), ("mpo_ln", "sac"), ("mpo_ln", "crossq"), ("mpo", "mpo_ln")]
    envs, mpo, crossq = comparisons["mpo", "crossq"]
    assert envs == ["A", "B"]
    np.testing.assert_array_equal(mpo, [[1.0, 5.0], [3.0, 6.0], [7.0, 6.0]])
    np.testing.assert_array_equal(crossq, [[0.0, 6.0], [4.0, 8.0]])  # its smallest seed count over A and B: 2 runs

    def brute_force(x: np.ndarray, y: np.ndarray) -> float:  # wins, and half of each tie, averaged over tasks
        per_task = [np.mean([float(a > b) + 0.5 * float(a == b) for a in x[:, t] for b in y[:, t]]) for t in range(x.shape[1])]
        return float(np.mean(per_task))

    estimates = dict(improvement_estimates({pair: (first, second) for pair, (_, first, second) in comparisons.items()}))
    for pair, (_, first, second) in comparisons.items():
        assert estimates[pair].startswith(f"{brute_force(first, second):.2f}")
    assert estimates["mpo", "mpo_ln"] == f"{brute_force(*comparisons['mpo', 'mpo_ln'][1:]):.2f}"  # one run: no interval
    # a suite whose reference is the variant compares it with the plain algorithm instead
    with_reference = shared_task_comparisons(results, list(scores), {"mpo_ln": "mpo"}, reference="mpo_ln")
    assert ("mpo_ln", "mpo") in with_reference and ("mpo", "mpo_ln") not in with_reference


def test_the_aggregate_compares_the_suites_reference_with_the_other_configurations(tmp_path):
    results = {
        env: {algo: [{"final_return": value + offset} for value in (1.0, 2.0)] for algo, offset in offsets.items()}
        for env, offsets in {
            "A": {"mpo_ln": 1.0, "mpo_n10": 0.0, "sac": -1.0},
            "B": {"mpo_ln": 0.0, "mpo_n10": 3.0, "sac": 0.5},
        }.items()
    }
    trains = {"mpo_ln": "mpo", "mpo_n10": "mpo"}
    lines = aggregate_section(results, tmp_path, str, trains, reference="mpo_ln")
    assert any(line.startswith("| MPO_LN > MPO_N10 | ") for line in lines)
    assert not any(line.startswith("| MPO_N10 > MPO_LN | ") for line in lines)
    without_reference = aggregate_section(results, tmp_path, str, trains)  # no configuration is `mpo`: none compared
    assert not any(" > MPO_" in line for line in without_reference)
    assert any(line.startswith("The MPO configurations (MPO_LN, MPO_N10) are not compared") for line in without_reference)
    assert not any("are not compared" in line for line in lines)


def test_the_aggregate_says_when_it_counts_fewer_runs_than_ran(tmp_path):
    """MPO has three runs on A but two on B: the aggregate takes two per environment, and its table says so."""
    results = {
        "A": {
            "mpo": [{"final_return": 1.0}, {"final_return": 2.0}, {"final_return": 3.0}],
            "sac": [{"final_return": 0.0}] * 2,
        },
        "B": {"mpo": [{"final_return": 1.0}, {"final_return": 2.0}], "sac": [{"final_return": 0.5}] * 2},
    }
    lines = aggregate_section(results, tmp_path, str)
    assert any(line.startswith("| MPO | 2 (its lowest seeds: up to 3 ran on an environment) | ") for line in lines)
    assert any(line.startswith("| SAC | 2 | ") for line in lines)


def test_a_curve_figure_averages_the_runs_evaluated_at_the_same_steps():
    """The grid most runs share is averaged; a run evaluated at other steps is left out of it, not misaligned."""
    runs = [{"curve": [{"step": step, "mean": 1.0} for step in steps]} for steps in ((10, 20), (10, 20, 25), (10, 20))]
    grid, curves = shared_grid(runs)
    assert grid == (10, 20) and curves == [runs[0]["curve"], runs[2]["curve"]]
    assert shared_grid(runs[1:2]) == ((10, 20, 25), [runs[1]["curve"]])


def test_training_series_takes_the_evaluations_whose_record_holds_the_quantity():
    """Evaluations before the first update (no record) or whose record lacks the key are left out, not read as zero."""
    run = {
        "curve": [
            {"step": 10, "mean": 0.0},
            {"step": 20, "mean": 0.0, "train": {}},
            {"step": 30, "mean": 0.0, "train": {"train/std_mean": 0.4, "train/alpha_std": 40.0}},
            {"step": 40, "mean": 0.0, "train": {"train/alpha_std": 41.0}},
            {"step": 50, "mean": 0.0, "train": {"train/std_mean": 0.3}},
        ]
    }
    steps, values = training_series(run, "train/std_mean")
    assert steps.tolist() == [30.0, 50.0] and values.tolist() == [0.4, 0.3]
    assert training_series(run, "train/alpha_std")[0].tolist() == [30.0, 40.0]
    assert [array.size for array in training_series(run, "train/ent_coef")] == [0, 0]


def test_a_training_figure_has_a_panel_for_each_quantity_some_run_logged(tmp_path):
    """MPO's std and temperature and SAC's entropy coefficient, in the panels' order; nothing logged, no figure."""

    def run(logged: dict[str, float]) -> dict[str, Any]:
        return {"curve": [{"step": step, "mean": 0.0, "train": dict(logged)} for step in (10, 20)]}

    mpo = [run({"train/temperature": 2.0, "train/std_mean": 0.4}), {"curve": [{"step": 10, "mean": 0.0}]}]
    runs_by_algo = {"mpo": mpo, "sac": [run({"train/ent_coef": 0.1, "train/critic_loss": 3.0})]}
    path = tmp_path / "training.png"
    assert training_figure("Env", runs_by_algo, path) == ["train/std_mean", "train/temperature", "train/ent_coef"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    unlogged = tmp_path / "unlogged.png"
    assert training_figure("Env", {"mpo": mpo[1:], "sac": [run({"train/critic_loss": 3.0})]}, unlogged) == []
    assert not unlogged.exists()


def test_shared_environment_comparisons_show_before_any_aggregate(tmp_path):
    """A long suite where only MPO finished every task: no aggregate yet, but its comparison on the task SAC finished."""
    results = {
        "A": {"mpo": [{"final_return": 3.0}, {"final_return": 1.0}], "sac": [{"final_return": 2.0}]},
        "B": {"mpo": [{"final_return": 5.0}]},
    }
    lines = aggregate_section(results, tmp_path, str)
    assert lines[0] == "Aggregates need two algorithms that ran on every environment of the suite."
    # MPO's two runs against SAC's one on A: one win and one loss
    assert "| MPO > SAC | A | 0.50 |" in lines
    assert not list(tmp_path.iterdir()), "no performance profile without an aggregate"
    assert aggregate_section({"A": {"mpo": results["A"]["mpo"]}}, tmp_path, str) == [lines[0]]  # nothing to compare


def test_report_gives_no_spread_for_a_single_seed(local_store, tmp_path):
    """An algorithm with one stored seed gets its return without a std or an interval (here or in the aggregate)."""
    suite_path, results = local_store
    store = copy_store(results, tmp_path / "results")
    sac_jobs = [job for job in load_suite(suite_path).jobs if job.algo == "sac"]
    sac_jobs[1].result_path(store).unlink()
    kept = load_result(sac_jobs[0].result_path(store), sac_jobs[0])["final_return"]
    out = tmp_path / "page.md"
    assert main(["report", str(suite_path), "--results", str(store), "--out", str(out), "--figures", str(tmp_path)]) == 0
    page = out.read_text()
    assert f"| SAC | 200 | 1 | {kept:.1f} ± — | {kept:.1f} | {kept:.1f} |" in page
    mpo_row = next(line for line in page.splitlines() if line.startswith("| MPO | 200 | 2 |"))
    assert " ± —" not in mpo_row and mpo_row.count("[") == 1  # two seeds: a std and an interval
    # the aggregate table too: one run per environment gives the IQM alone, two give an interval
    aggregate = page.split("## Aggregate over environments")[1].splitlines()
    sac_iqm = next(line for line in aggregate if line.startswith("| SAC | 1 | "))
    mpo_iqm = next(line for line in aggregate if line.startswith("| MPO | 2 | "))
    assert re.fullmatch(r"\| SAC \| 1 \| -?\d\.\d\d \|", sac_iqm)
    assert re.fullmatch(r"\| MPO \| 2 \| -?\d\.\d\d \[-?\d\.\d\d, -?\d\.\d\d\] \|", mpo_iqm)
    # and the probability of improvement over a baseline of one run is an estimate without an interval
    assert re.search(r"^\| MPO > SAC \| \d\.\d\d \|$", page, flags=re.MULTILINE)


def test_runs_with_more_torch_threads_get_speed_rows_of_their_own(local_store, tmp_path):
    """A run redone with --threads 2 records it, and the speed table never takes one median over both thread counts."""
    suite_path, results = local_store
    store = copy_store(results, tmp_path / "results")
    redone = next(job for job in load_suite(suite_path).jobs if job.algo == "sac" and job.seed == 1)
    redone.result_path(store).unlink()
    command = ["run", str(suite_path), "--results", str(store), "--algos", "sac", "--seeds", "1", "--threads", "2"]
    assert main(command) == 0
    assert load_result(redone.result_path(store), redone)["torch_threads"] == 2
    out = tmp_path / "page.md"
    assert main(["report", str(suite_path), "--results", str(store), "--out", str(out), "--figures", str(tmp_path)]) == 0
    speed_rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| Pendulum-v1 | SAC | [8] |")]
    assert [(row[5], row[6]) for row in speed_rows] == [("1", "1"), ("2", "1")]  # threads, runs
    this_processor = processor(load_result(redone.result_path(store), redone))
    assert this_processor == stamp.cpu_model()
    mpo_rows = [line for line in out.read_text().splitlines() if line.startswith("| Pendulum-v1 | MPO | [8] | 16 | ")]
    assert [row.split(" | ")[4:7] for row in mpo_rows] == [[this_processor, "1", "2"]]


def test_speed_rows_never_mix_processors(local_store, tmp_path):
    """A run trained on another processor, or on one its file does not name, gets a speed row of its own."""
    suite_path, results = local_store
    store = copy_store(results, tmp_path / "results")
    sac_runs = [job for job in load_suite(suite_path).jobs if job.algo == "sac"]
    machines = ["vm x86_64 2 cores", "node7 Intel(R) Xeon(R) Platinum 8481C 8 cores Linux"]
    for job, machine_line in zip(sac_runs, machines, strict=True):
        result = load_result(job.result_path(store), job)
        write_result(job.result_path(store), dict(result, machine=machine_line))
    out = tmp_path / "page.md"
    assert main(["report", str(suite_path), "--results", str(store), "--out", str(out), "--figures", str(tmp_path)]) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| Pendulum-v1 | SAC | [8] | ")]
    assert sorted((row[4], row[6]) for row in rows) == [("Intel(R) Xeon(R) Platinum 8481C", "1"), ("not recorded", "1")]
    assert "speeds measured on two processors are not comparable" in out.read_text()


@pytest.mark.parametrize("threads", ["0", "-1", "two"])
def test_torch_threads_must_be_a_positive_integer(local_store, threads, capsys):
    suite_path, results = local_store
    with pytest.raises(SystemExit):
        main(["run", str(suite_path), "--results", str(results), "--threads", threads])
    assert f"argument --threads: expected a positive integer, got '{threads}'" in capsys.readouterr().err


def test_run_job_refuses_a_bad_thread_count_before_training(local_store):
    suite_path, _ = local_store
    job = load_suite(suite_path).jobs[0]
    with pytest.raises(ValueError, match="torch_threads must be a positive integer, got 0"):
        run_job(job, torch_threads=0)


def test_a_final_evaluation_off_the_grid_is_timed_as_evaluation_not_training(tmp_path, monkeypatch):
    """A budget off the evaluation grid ends with one more evaluation: its time is evaluation time, not training's."""
    spec = {**TINY, "envs": {"Pendulum-v1": {**TINY["envs"]["Pendulum-v1"], "steps": 150, "seeds": [0]}}}
    job = next(job for job in load_suite(write_suite(tmp_path, spec)).jobs if job.algo == "sac")
    evaluate = callbacks.evaluate_policy
    pause = 2.0  # each evaluation takes longer than the whole of this run's training

    def slow_evaluation(*args, **kwargs):
        time.sleep(pause)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(callbacks, "evaluate_policy", slow_evaluation)
    start = time.perf_counter()
    result = run_job(job)
    wall = time.perf_counter() - start
    assert [point["step"] for point in result["curve"]] == [100, 150]
    assert result["eval_seconds"] >= 2 * pause
    # the final evaluation's pause taken off the training time instead would leave less than nothing
    assert 0 < result["train_seconds"] <= wall - result["eval_seconds"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing_key", "short_curve", "wrong_run", "nan_return"])
def test_damaged_result_file_is_reported_and_skipped(local_store, tmp_path, damage, capsys):
    """A corrupted or partial file is named, left out of the report and redone by the runner; never silently used."""
    suite_path, results = local_store
    copy = copy_store(results, tmp_path / "results")
    suite = load_suite(suite_path)
    damaged = suite.jobs[0].result_path(copy)
    record = json.loads(damaged.read_text())
    if damage == "garbage":
        damaged.write_text("not json")
    elif damage == "truncated":
        damaged.write_text(damaged.read_text()[:200])
    elif damage == "missing_key":
        del record["final_return"]
        damaged.write_text(json.dumps(record))
    elif damage == "short_curve":
        record["curve"] = record["curve"][:1]
        damaged.write_text(json.dumps(record))
    elif damage == "nan_return":  # a NaN would make every run of its environment score 1 in the aggregate
        record["curve"][0]["mean"] = float("nan")
        damaged.write_text(json.dumps(record))
    else:
        record["seed"] = 7
        damaged.write_text(json.dumps(record))

    with pytest.raises(ResultError, match=damaged.name):
        load_result(damaged, suite.jobs[0])
    runs, problems, missing = collect(suite, copy)
    assert len(problems) == 1 and damaged.name in problems[0] and not missing
    assert len(runs["Pendulum-v1"][suite.jobs[0].algo]) == 1
    out = tmp_path / "page.md"
    main(["report", str(suite_path), "--results", str(copy), "--out", str(out), "--figures", str(tmp_path / "fig")])
    assert "Unusable result files (skipped)" in out.read_text() and damaged.name in out.read_text()
    main(["status", str(suite_path), "--results", str(copy)])
    output = capsys.readouterr()
    assert f"todo  {suite.jobs[0].name}" in output.out and "will be redone" in output.err


def test_changed_settings_fill_unnamed_settings_with_the_algorithms_defaults():
    defaults = {"gamma": "0.99", "target_precision": "'float32'"}
    # naming a default explicitly changes nothing, on either side
    assert changed_settings({"gamma": "0.99"}, {"target_precision": "'float32'"}, defaults) == {}
    assert changed_settings({"target_precision": "'float32'"}, {}, defaults) == {}
    # a value that moved, a default left for another value, a setting the algorithm has no default for
    assert changed_settings({"gamma": "0.98"}, {"gamma": "0.99"}, defaults) == {"gamma": ("0.98", "0.99")}
    assert changed_settings({}, {"target_precision": "'auto'"}, defaults) == {"target_precision": (None, "'auto'")}
    assert changed_settings({"policy": "'MlpPolicy'"}, {}, defaults) == {"policy": ("'MlpPolicy'", None)}
    # a setting the run did not record and that has no default cannot be confirmed: it is listed
    assert changed_settings({}, {"policy": "'MlpPolicy'"}, defaults) == {"policy": (None, "'MlpPolicy'")}
    # an empty keyword dict, however spelt, is the None default; a non-empty one is not
    kwargs_default = {"policy_kwargs": "None"}
    for empty in ("'dict()'", "{}", "'{}'", "None"):
        assert changed_settings({}, {"policy_kwargs": empty}, kwargs_default) == {}
        assert changed_settings({"policy_kwargs": empty}, {"policy_kwargs": "'dict()'"}, kwargs_default) == {}
    layer_norm = "'dict(layer_norm=True)'"
    assert changed_settings({}, {"policy_kwargs": layer_norm}, kwargs_default) == {"policy_kwargs": (None, layer_norm)}
    line = describe_changes({"gamma": ("0.98", "0.99"), "target_precision": (None, "'auto'")}, "abc1234")
    assert line == "gamma: 0.98 -> 0.99; target_precision: not recorded (abc1234) -> 'auto'"
    assert describe_changes({"gamma": ("0.98", None)}, "abc1234") == "gamma: 0.98 -> not set (default)"


def test_paces_are_medians_over_runs_that_trained_the_same_way():
    def record(algo: str, seconds: float, steps: int, settings: dict[str, str], source: str, **more) -> dict:
        return {
            "algo": algo,
            "env": "Hopper-v5",
            "seed": 0,
            "steps": steps,
            "num_timesteps": steps,
            "train_seconds": seconds,
            "eval_seconds": 1.0,
            "checkpoint_seconds": 1.0,
            "hyperparams": settings,
            "hyperparams_source": source,
            **more,
        }

    mpo, sac = "sb3_mpo/hyperparams/mpo.yml", "rl_zoo3/hyperparams/sac.yml, entry Hopper-v4"
    assert (trained_algorithm(record("x", 1, 1, {}, mpo)), trained_algorithm(record("x", 1, 1, {}, sac))) == ("mpo", "sac")
    shipped, wider = {"batch_size": "256", "gamma": "0.99"}, {"batch_size": "512", "gamma": "0.99"}
    slow = record("mpo", 998.0, 200, shipped, mpo, seed=1)
    two_legs = [{"step": 10, "torch_threads": 2, "before": {"torch_threads": 1, "machine": "vm x 2 cores Linux"}}]
    measured = paces(
        [
            record("mpo", 98.0, 100, shipped, mpo),  # (98 + 1 + 1) s over 100 steps: 1 s per step
            record("mpo_ln", 298.0, 100, dict(reversed(shipped.items())), mpo, seed=2),  # same settings, another name
            slow,
            dict(slow, suite="other", adopted_from={"suite": "mujoco_dev", "algo": "mpo"}),  # the same run, adopted
            record("mpo", 48.0, 100, wider, mpo),
            record("mpo", 18.0, 100, shipped, mpo, torch_threads=2),
            record("mpo", 8.0, 100, shipped, mpo, torch_threads=2, resumes=two_legs),  # one leg with 1 thread, one with 2
            record("sac", 8.0, 10, shipped, sac),
        ]
    )
    assert measured == {
        pace_key("mpo", "Hopper-v5", shipped, 1): 3.0,  # the median of 1, 3 and 5 s per step: the adopted copy counts once
        pace_key("mpo", "Hopper-v5", wider, 1): 0.5,
        pace_key("mpo", "Hopper-v5", shipped, 2): 0.2,
        pace_key("mpo", "Hopper-v5", shipped, None): 0.1,
        pace_key("sac", "Hopper-v5", shipped, 1): 1.0,
    }
    # the rougher guesses for a training without stored runs: the same settings under other thread counts ...
    assert rough_pace(measured, pace_key("mpo", "Hopper-v5", shipped, 4)) == 0.2  # the median of 3, 0.2 and 0.1
    # ... else the median over the algorithm's trainings on the task under any settings, where it has any
    assert rough_pace(measured, pace_key("mpo", "Hopper-v5", {"batch_size": "8"}, 1)) == 0.35
    assert rough_pace(measured, pace_key("mpo", "Hopper-v5", None, 1)) == 0.35  # settings that cannot be resolved
    assert rough_pace(measured, pace_key("mpo", "Walker2d-v5", shipped, 1)) is None


def test_status_estimates_what_is_left_from_stored_runs_of_the_same_training(local_store, tmp_path, capsys):
    suite_path, results = local_store
    store = copy_store(results, tmp_path / "results")
    job = next(job for job in load_suite(suite_path).jobs if job.algo == "mpo" and job.seed == 1)
    job.result_path(store).unlink()
    assert main(["status", str(suite_path), "--results", str(store)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"todo  {job.name}  ~\d+ min", out), "the other seed of the same training gives the pace"
    assert "for the 1 runs with a stored run that trained the same way with 1 torch" in out and "without one" not in out
    assert main(["status", str(suite_path), "--results", str(store), "--threads", "2"]) == 0
    out = capsys.readouterr().out
    # the stored runs trained with one torch thread: their pace is only a rougher guess for runs with two
    assert re.search(rf"todo  {job.name}  ≈\d+ min\n", out)
    assert "for the 0 runs with a stored run that trained the same way with 2 torch" in out
    spec = yaml.safe_load(suite_path.read_text())
    spec["envs"]["Pendulum-v1"]["hyperparams"]["mpo"]["batch_size"] = 8  # no stored run trained this way
    assert main(["status", str(write_suite(tmp_path, spec)), "--results", str(store)]) == 0
    out = capsys.readouterr().out
    # no stored run trained this way: the other settings' runs of the algorithm on the task give a rougher pace
    assert re.search(rf"todo  {job.name}  ≈\d+ min\n", out)
    assert "for the 0 runs with a stored run that trained the same way" in out and "more for the 1 runs paced by" in out
    for other in load_suite(suite_path).jobs:
        if other.algo == "mpo" and other.result_path(store).exists():
            other.result_path(store).unlink()
    assert main(["status", str(write_suite(tmp_path, spec)), "--results", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"todo  {job.name}\n" in out and "; 2 without one to go by" in out  # no MPO run left to go by


def test_the_settings_a_run_stores_are_those_its_suite_resolves(local_store):
    """The check that compares stored runs with their suite resolves settings as training does: no change is found."""
    suite_path, results = local_store
    for job in load_suite(suite_path).jobs:
        assert zoo_settings(job) == load_result(job.result_path(results), job)["hyperparams"]
    mpo_defaults = algorithm_defaults("mpo")
    assert mpo_defaults["target_precision"] == repr("float32") and "policy" not in mpo_defaults  # policy is required


def test_runs_stored_with_other_settings_are_listed_and_kept_unless_asked(local_store, tmp_path, capsys):
    """After a suite's override is edited, status and run name the stale runs and what changed; only
    --rerun-changed redoes them, with the new settings."""
    suite_path, results = local_store
    store = copy_store(results, tmp_path / "results")
    spec = yaml.safe_load(suite_path.read_text())
    spec["envs"]["Pendulum-v1"]["hyperparams"]["mpo"]["batch_size"] = 8
    edited = write_suite(tmp_path, spec)
    stale = [job for job in load_suite(edited).jobs if job.algo == "mpo"]
    before = result_files(store)

    assert main(["status", str(edited), "--results", str(store)]) == 0
    output = capsys.readouterr().out
    for job in load_suite(edited).jobs:
        changed = f"done  {job.name}  (settings changed since: batch_size: 16 -> 8)"
        assert (changed in output) == (job in stale) and f"done  {job.name}" in output
    assert "4 / 4 finished, 2 of them with other settings than now" in output
    assert main(["run", str(edited), "--results", str(store)]) == 0
    output = capsys.readouterr()
    assert output.err.count("with other settings than the suite gives now, kept (--rerun-changed redoes it)") == 2
    assert "4 finished, 0 to run" in output.out and result_files(store) == before

    assert main(["run", str(edited), "--results", str(store), "--seeds", "0", "--rerun-changed"]) == 0
    assert "2 runs, 1 finished, 1 to run" in capsys.readouterr().out
    assert load_result(stale[0].result_path(store), stale[0])["hyperparams"]["batch_size"] == "8"
    assert main(["status", str(edited), "--results", str(store)]) == 0
    assert "4 / 4 finished, 1 of them with other settings than now" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"algos": ["mpo", "sacc"]}, r"envs.Pendulum-v1.algos: unknown algorithms \['sacc'\]"),
        ({"eval_freq": 500}, r"need 1 <= eval_freq <= steps"),
        ({"steps": None}, r"missing keys \['steps'\]"),
        ({"algo_seeds": {"ppo": [0]}}, r"envs.Pendulum-v1.algo_seeds: names an algorithm the env does not run"),
        ({"algo_seeds": {"sac": [2]}}, r"algo_seeds.sac: must be a non-empty list of the env's seeds \[0, 1\], got \[2\]"),
        ({"algo_seeds": {"sac": []}}, r"algo_seeds.sac: must be a non-empty list"),
        ({"algo_seeds": [0]}, r"algo_seeds: must map algorithms to lists of seeds"),
    ],
)
def test_bad_suite_is_refused_before_running(tmp_path, change, message):
    env = {**TINY["envs"]["Pendulum-v1"], **change}
    env = {key: value for key, value in env.items() if value is not None}
    env["hyperparams"] = {algo: value for algo, value in env["hyperparams"].items() if algo in env["algos"]}
    path = write_suite(tmp_path, {**TINY, "envs": {"Pendulum-v1": env}})
    with pytest.raises(ValueError, match=message):
        load_suite(path)


@pytest.mark.parametrize("page", ["/tmp/page.md", "docs/page.txt"])
def test_suite_page_must_be_a_relative_markdown_path(tmp_path, page):
    with pytest.raises(ValueError, match=r"page: must be a relative \.md path"):
        load_suite(write_suite(tmp_path, {**TINY, "page": page}))


def test_report_writes_the_suites_page_by_default(local_store, tmp_path, monkeypatch):
    """Without --out, `report` writes the suite's own page (never another suite's), its figures beside it."""
    suite_path, results = local_store
    monkeypatch.setattr("benchmarks.suite.BENCHMARKS_DIR", tmp_path / "benchmarks")
    assert load_suite(suite_path).page_path == tmp_path / "docs" / "results" / "tiny.md"
    spec = {**yaml.safe_load(suite_path.read_text()), "page": "docs/smoke/page.md"}
    assert main(["report", str(write_suite(tmp_path, spec)), "--results", str(results)]) == 0
    assert (tmp_path / "docs" / "smoke" / "page.md").read_text().startswith("# Benchmark suite `tiny`")
    assert (tmp_path / "docs" / "smoke" / "figures" / "tiny" / "Pendulum-v1.png").is_file()


def test_budget_multiplier_scales_steps_and_evaluations(tmp_path):
    spec = {**TINY, "budget_multiplier": {"ppo": 10}}
    spec["envs"] = {"Pendulum-v1": {"steps": 200, "eval_freq": 100, "seeds": [0], "algos": ["mpo", "ppo"]}}
    jobs = {job.algo: job for job in load_suite(write_suite(tmp_path, spec)).jobs}
    assert (jobs["mpo"].steps, jobs["mpo"].eval_freq) == (200, 100)
    assert (jobs["ppo"].steps, jobs["ppo"].eval_freq) == (2000, 1000)


def test_algo_seeds_plan_some_seeds_of_an_algorithm(tmp_path):
    """An algorithm listed in algo_seeds runs those of the env's seeds only; the others run every seed."""
    spec = {**TINY, "envs": {"Pendulum-v1": {**TINY["envs"]["Pendulum-v1"], "seeds": [0, 1, 2], "algo_seeds": {"sac": [1]}}}}
    jobs = load_suite(write_suite(tmp_path, spec)).jobs
    assert [(job.algo, job.seed) for job in jobs] == [("mpo", 0), ("mpo", 1), ("sac", 1), ("mpo", 2)]


def test_variants_run_their_algorithm_with_their_settings(tmp_path):
    """A named variant trains its base algorithm with its hyperparameters; the env's overrides come on top."""
    retrace = {"q_target": "retrace", "n_steps": 1, "batch_size": 64}  # the Pendulum-v1 entry uses 5-step returns
    spec = {**TINY, "variants": {"mpo_retrace": {"algo": "mpo", "hyperparams": retrace}}}
    spec["envs"] = {"Pendulum-v1": {**TINY["envs"]["Pendulum-v1"], "seeds": [0], "algos": ["mpo_retrace"]}}
    spec["envs"]["Pendulum-v1"]["hyperparams"] = {"mpo_retrace": TINY["envs"]["Pendulum-v1"]["hyperparams"]["mpo"]}
    suite_path = write_suite(tmp_path, spec)
    (job,) = load_suite(suite_path).jobs
    assert (job.algo, job.zoo_algo) == ("mpo_retrace", "mpo")
    assert job.hyperparams["q_target"] == "retrace" and job.hyperparams["batch_size"] == 16
    assert main(["run", str(suite_path), "--results", str(tmp_path / "results"), "--workers", "1"]) == 0
    result = load_result(job.result_path(tmp_path / "results"), job)
    assert result["algo"] == "mpo_retrace" and result["hyperparams"]["q_target"] == repr("retrace")
    assert result["critic_target"] == "retrace (segment_length=8, retrace_lambda=0.95)"
    assert result["hyperparams_source"].endswith("hyperparams/mpo.yml")
    bad = {**spec, "variants": {"mpo_retrace": {"algo": "mpoo"}}}
    with pytest.raises(ValueError, match=r"variants.mpo_retrace: needs an 'algo'"):
        load_suite(write_suite(tmp_path, bad))


SHIPPED_SUITES = sorted(path.stem for path in SUITES_DIR.glob("*.yml"))


@pytest.mark.parametrize("name", SHIPPED_SUITES)
def test_shipped_suites_load_and_their_stored_results_are_valid(name):
    """Every suite in benchmarks/suites/ loads, and every result file stored for it describes one of its runs."""
    suite = load_suite(name)
    assert suite.jobs
    if name != "tiny":  # the smoke test; published suites evaluate over at least 10 episodes
        assert all(job.eval_episodes >= 10 for job in suite.jobs)
    _, problems, _ = collect(suite, RESULTS_DIR)
    assert problems == []
    expected = {job.result_path(RESULTS_DIR) for job in suite.jobs}
    assert set((RESULTS_DIR / suite.name).glob("*/*.json")) <= expected


def test_bootstrap_intervals_are_reproducible():
    """The same finals give the same confidence intervals whatever NumPy's global state, which is left untouched."""
    finals = {"mpo": np.random.default_rng(1).normal(size=10), "sac": np.random.default_rng(2).normal(size=10)}
    np.random.seed(123)
    first = iqm_interval(finals)
    after_first = np.random.get_state()[1].copy()
    np.random.seed(456)
    assert iqm_interval(finals) == first
    np.random.seed(123)
    assert np.array_equal(np.random.get_state()[1], after_first)  # the global generator was restored
    low, high = first["mpo"][1:]
    assert low < first["mpo"][0] < high  # a real interval, not a degenerate one


def test_iqm_is_the_mean_of_the_middle_half():
    """With 8 runs the interquartile mean drops the 2 lowest and the 2 highest finals and averages the other 4."""
    finals = np.array([5.0, -3.0, 100.0, 2.0, 7.0, -50.0, 4.0, 1.0])
    point, low, high = iqm_interval({"mpo": finals})["mpo"]
    assert point == pytest.approx(np.mean([1.0, 2.0, 4.0, 5.0]))
    assert low <= point <= high


def test_an_interval_does_not_depend_on_the_other_algorithms_on_the_page():
    """Adding an algorithm (before the others, with another seed count) leaves every other algorithm's interval as it
    was, for the IQM and for the probability of improvement: each key draws from its own seeded bootstrap."""
    from rliable import metrics

    draw = np.random.default_rng(3)
    mpo, sac, ppo = draw.normal(size=(5, 2)), draw.normal(size=(5, 2)), draw.normal(size=(3, 2))
    alone = iqm_interval({"mpo": mpo[:, 0]})
    assert iqm_interval({"ppo": ppo[:, 0], "mpo": mpo[:, 0], "sac": sac[:, 0]})["mpo"] == alone["mpo"]
    pairs = {"mpo,sac": (mpo, sac)}
    point, interval = interval_estimates(pairs, metrics.probability_of_improvement)
    more_point, more_interval = interval_estimates({"mpo,ppo": (mpo, ppo), **pairs}, metrics.probability_of_improvement)
    assert more_point["mpo,sac"] == point["mpo,sac"]
    assert np.array_equal(more_interval["mpo,sac"], interval["mpo,sac"])
    assert not np.array_equal(more_interval["mpo,ppo"], interval["mpo,sac"])  # the keys are not all given one result


def test_library_versions_line_shows_every_version_the_runs_recorded():
    runs = [
        {"versions": {"torch": "2.13.0", "mujoco": "3.3.0"}},
        {"versions": {"torch": "2.13.0", "mujoco": "4.0.0"}},
        {"versions": {"torch": "2.13.0"}},  # a run from before the simulators were recorded
    ]
    assert library_versions_line(runs) == "torch 2.13.0, mujoco 3.3.0 / 4.0.0 / not recorded"
    assert library_versions_line([]) == "—"


EXPLORATION = {
    "name": "tiny_exploration",
    "kind": "exploration",
    "envs": {"sb3_mpo/PointRooms-v0": {"steps": 300, "seeds": [0], "algos": ["random", "mpo"]}},
}


def test_exploration_suite_runs_through_the_runner_and_reports(tmp_path):
    """An exploration suite's runs are jobs of the same runner, stored under the env's folder, and reported as tables."""
    suite_path, results = write_suite(tmp_path, EXPLORATION), tmp_path / "results"
    assert main(["run", str(suite_path), "--results", str(results), "--workers", "1"]) == 0
    suite = load_suite(suite_path)
    for job in suite.jobs:
        path = job.result_path(results)
        assert path.parent.name == "sb3_mpo-PointRooms-v0"
        result = load_result(path, job)
        assert result["kind"] == "exploration" and result["algo"] == job.algo and result["steps"] == 300
        assert 0.0 < result["replay"]["coverage"] <= 1.0 and len(result["replay"]["room_fractions"]) == 4
    page = tmp_path / "page.md"
    assert main(["report", str(suite_path), "--results", str(results), "--out", str(page)]) == 0
    text = page.read_text()
    assert "- Runs stored: 2 of 2" in text
    rows = [line for line in text.splitlines() if line.startswith(("| random |", "| mpo |"))]
    assert len(rows) == 2 and all("| 1 | 300 |" in row for row in rows)
    assert "Visits per room in replay" in text  # PointRooms has rooms, not a goal


def test_exploration_runs_keep_the_warnings_their_training_gives(tmp_path, monkeypatch):
    """As a returns run's: each distinct warning once, at the env step of its first (building the model's at 0), and listed
    on the page."""
    from sb3_mpo import MPO

    def warn_from_step_120(self: MPO) -> None:
        if self.num_timesteps in (120, 180):
            warnings.warn("MPO: a health check")

    setup_model = MPO._setup_model

    def warn_when_built(self: MPO) -> None:
        warnings.warn("MPO: built")
        setup_model(self)

    monkeypatch.setattr(MPO, "_on_step", warn_from_step_120)
    monkeypatch.setattr(MPO, "_setup_model", warn_when_built)
    suite_path, results = write_suite(tmp_path, EXPLORATION), tmp_path / "results"
    kept = {}
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown at both steps: the record keeps the first
        for job in load_suite(suite_path).jobs:  # in this process, where MPO warns
            write_result(job.result_path(results), run_exploration_job(job))
            kept[job.algo] = load_result(job.result_path(results), job)["warnings"]
    assert kept == {
        "random": [],
        "mpo": [
            {"step": 0, "category": "UserWarning", "message": "MPO: built"},
            {"step": 120, "category": "UserWarning", "message": "MPO: a health check"},
        ],
    }
    page = tmp_path / "page.md"
    assert main(["report", str(suite_path), "--results", str(results), "--out", str(page)]) == 0
    assert "- `mpo` sb3_mpo/PointRooms-v0 seed 0, step 120 (UserWarning): MPO: a health check" in page.read_text()


def test_results_of_the_other_kind_are_refused(local_store, tmp_path):
    """A returns record is not accepted for an exploration job (same name and path), and the refusal says why."""
    suite_path, results = local_store
    returns_job = load_suite(suite_path).jobs[0]
    exploration_job = dataclasses.replace(returns_job, kind="exploration")
    with pytest.raises(ResultError, match="of kind 'returns', expected 'exploration'"):
        load_result(returns_job.result_path(results), exploration_job)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kind": "coverage"}, r"kind: must be one of \('returns', 'exploration'\)"),
        ({"variants": {"x": {"algo": "mpo"}}}, "variants: an exploration suite takes none"),
        ({"goal": {"at_or_above": ["sac"]}}, "goal: an exploration suite takes none"),
        ({"paired_evaluation": "mean_action"}, "paired_evaluation: an exploration suite takes none"),
        ({"envs": {"Pendulum-v1": {"steps": 10, "seeds": [0], "algos": ["td3"]}}}, r"unknown algorithms \['td3'\]"),
        ({"envs": {"Pendulum-v1": {"steps": 10, "seeds": [0], "algos": ["mpo"], "zoo_entry": "X"}}}, "zoo_entry: an exp"),
    ],
)
def test_exploration_suites_refuse_what_they_cannot_run(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_suite(write_suite(tmp_path, {**EXPLORATION, **change}))


def test_readme_standings_are_generated_from_the_stored_results():
    """The README's table is exactly what the stored files give (regenerate it with `python -m benchmarks standings`)."""
    text = README.read_text()
    assert replace_block(text, standings_table(load_rows())) == text


def test_standings_rank_mpo_among_the_baselines_at_its_budget(local_store, tmp_path):
    """A row compares MPO with the runs at its own budget, and ranks it by mean final return."""
    suite_path, results = local_store
    suite = load_suite(suite_path)
    row = Row(suite=str(suite_path), env="Pendulum-v1", mpo="mpo", label="tiny")
    line = standings_line(row, results)
    finals = {algo: [load_result(job.result_path(results), job)["final_return"] for job in suite.jobs if job.algo == algo]
              for algo in ("mpo", "sac")}  # fmt: skip
    rank = 1 + (np.mean(finals["sac"]) > np.mean(finals["mpo"]))
    assert line == (
        f"| tiny | 200 | {np.mean(finals['mpo']):.1f} ± {np.std(finals['mpo']):.1f} (2) "
        f"| {np.mean(finals['sac']):.1f} ± {np.std(finals['sac']):.1f} (2) | — | {rank} of 2 |"
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold table\n{END}\nafter\n")
    rows_file = tmp_path / "rows.yml"
    rows_file.write_text(yaml.safe_dump({"rows": [vars(row)]}))
    with pytest.raises(ValueError, match="no standings block"):
        replace_block("no markers", [])
    regenerated = replace_block(readme.read_text(), standings_table(load_rows(rows_file), results))
    assert regenerated.startswith(f"intro\n{BEGIN}\n| task |") and regenerated.endswith(f"{line}\n{END}\nafter\n")


def test_standings_mark_a_cell_whose_seeds_trained_with_different_settings(local_store, tmp_path):
    suite_path, results = local_store
    store = copy_store(results, tmp_path / "results")
    row = Row(suite=str(suite_path), env="Pendulum-v1", mpo="mpo", label="tiny")
    assert "†" not in standings_line(row, store) and MIXED_NOTE not in standings_table([row], store)
    (job,) = [job for job in load_suite(suite_path).jobs if job.algo == "mpo" and job.seed == 1]
    record = json.loads(job.result_path(store).read_text())
    job.result_path(store).write_text(json.dumps({**record, "hyperparams": {**record["hyperparams"], "gamma": "0.9"}}))
    mpo_cell, sac_cell = standings_line(row, store).split(" | ")[2:4]
    assert mpo_cell.endswith(" (2)†") and sac_cell.endswith(" (2)")
    assert standings_table([row], store)[-2:] == ["", MIXED_NOTE]


def test_standings_mark_a_rank_over_means_of_different_seeds(local_store, tmp_path):
    """MPO's rank over a baseline with fewer seeds so far compares means over different seeds: the rank says so."""
    suite_path, results = local_store
    store = copy_store(results, tmp_path / "results")
    row = Row(suite=str(suite_path), env="Pendulum-v1", mpo="mpo", label="tiny")
    assert standings_line(row, store).endswith(" of 2 |") and UNEQUAL_NOTE not in standings_table([row], store)
    (job,) = [job for job in load_suite(suite_path).jobs if job.algo == "sac" and job.seed == 1]
    job.result_path(store).unlink()
    line = standings_line(row, store)
    assert line.endswith(f" of 2{UNEQUAL} |") and line.split(" | ")[3].endswith(" (1)")
    assert standings_table([row], store)[-2:] == ["", UNEQUAL_NOTE]


def test_standings_list_baselines_run_as_variants_and_rank_mpo_only_against_one(local_store, tmp_path):
    """A baseline run under a variant's name (e.g. CrossQ with smaller critics) is a baseline; MPO alone has no rank."""
    _, results = local_store
    settings = TINY["envs"]["Pendulum-v1"]
    hyperparams = {"mpo": settings["hyperparams"]["mpo"], "sac_small": settings["hyperparams"]["sac"]}
    spec = {**TINY, "name": "variants", "variants": {"sac_small": {"algo": "sac"}}}
    spec["envs"] = {"Pendulum-v1": {**settings, "algos": ["mpo", "sac_small"], "hyperparams": hyperparams}}
    variant_suite = load_suite(write_suite(tmp_path, spec))
    store = tmp_path / "results"
    for job in variant_suite.jobs:
        source = dataclasses.replace(job, suite="tiny", algo=job.zoo_algo, base_algo="").result_path(results)
        record = {**json.loads(source.read_text()), "suite": "variants", "algo": job.algo}
        job.result_path(store).parent.mkdir(parents=True, exist_ok=True)
        job.result_path(store).write_text(json.dumps(record))
    row = Row(suite=str(tmp_path / "variants.yml"), env="Pendulum-v1", mpo="mpo", label="tiny")
    assert "| SAC_SMALL " in standings_line(row, store) and standings_line(row, store).endswith(" of 2 |")
    for job in variant_suite.jobs:
        if job.algo == "sac_small":
            job.result_path(store).unlink()
    assert standings_line(row, store).endswith("| — | — | — (no baseline at these steps) |")


def test_standings_give_no_spread_for_a_single_seed(local_store, tmp_path):
    """One seed is shown as its value with a dash for the spread, as the suites' pages show it, not as ± 0.0."""
    suite_path, results = local_store
    single = tmp_path / "single"
    for path in results.rglob("*.json"):
        if "seed0" in path.name:
            target = single / path.relative_to(results)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    line = standings_line(Row(suite=str(suite_path), env="Pendulum-v1", mpo="mpo", label="tiny"), single)
    assert line.count("± — (1)") == 2 and "± 0.0" not in line


def test_the_library_never_imports_the_benchmark_instrument():
    """The layering is benchmarks -> zoo -> mpo: no module of the installed package imports `benchmarks`."""
    package = Path(__file__).resolve().parents[1] / "sb3_mpo"
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"^\s*(from|import)\s+benchmarks\b", path.read_text(), flags=re.MULTILINE)
    ]
    assert offenders == []


def test_machine_stamp_names_the_processor_model(tmp_path, monkeypatch):
    """Results say which processor trained them: Linux's model name where /proc/cpuinfo has one, else platform's."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n\n")
    monkeypatch.setattr(stamp, "CPUINFO", cpuinfo)
    assert stamp.cpu_model() == "Intel(R) Xeon(R) Platinum 8488C"
    assert f" Intel(R) Xeon(R) Platinum 8488C {os.cpu_count()} cores " in stamp.machine()
    monkeypatch.setattr(stamp, "CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(stamp.platform, "processor", lambda: "")
    assert stamp.cpu_model() == stamp.platform.machine()


def test_commit_stamp_is_dirty_for_changed_code_not_for_changed_results(tmp_path, monkeypatch):
    """Runs write results and pages beside the code: those leave the stamp clean, a changed tracked source does not."""

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    for path in ("code.py", "benchmarks/results/run.json", "docs/results/page.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("original\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    monkeypatch.setattr(stamp, "REPOSITORY", tmp_path)
    clean = stamp.git_commit()
    assert re.fullmatch(r"[0-9a-f]{7,}", clean)
    (tmp_path / "benchmarks/results/run.json").write_text("rewritten\n")
    (tmp_path / "docs/results/page.md").unlink()
    assert stamp.git_commit() == clean
    (tmp_path / "code.py").write_text("changed\n")
    assert stamp.git_commit() == f"{clean}-dirty"
    # pages order measurements by their commit's time; a stamp the checkout does not hold sorts first (time 0)
    later_date = {**os.environ, "GIT_COMMITTER_DATE": "2030-01-01T00:00:00"}
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "later"],
        cwd=tmp_path,
        check=True,
        env=later_date,
    )
    later = stamp.git_commit()
    assert stamp.commit_time(f"{clean}-dirty") == stamp.commit_time(clean) > 0
    assert stamp.commit_time(later) > stamp.commit_time(clean)
    assert stamp.commit_time("unknown") == 0 and stamp.commit_time("0000000") == 0


def test_reward_scale_page_compares_each_scale_with_the_unscaled_runs_spread():
    unit = np.array([-150.0, -120.0, -135.0])
    assert within_unit_scale(np.array([-140.0, -125.0]), unit) == "yes"
    assert within_unit_scale(np.array([-1000.0, -130.0]), unit) == "no"
    assert within_unit_scale(np.array([-130.0]), unit[:1]) == "—"
    assert within_unit_scale(np.array([-130.0]), None) == "—"


def test_update_cost_page_reads_ratios_round_by_round_newest_commit_first(tmp_path, monkeypatch):
    from benchmarks import update_cost

    def record(commit: str, mpo: list[float]) -> dict:
        return {
            "env": "Pendulum-v1",
            "commit": commit,
            "machine": "test machine",
            "torch": "2",
            "load_average": [1.0, 1.0],
            "rounds": 3,
            "updates": 50,
            "labels": {"sac": "SB3 SAC", "mpo": "MPO"},
            "milliseconds": {"sac": [10.0, 20.0, 10.0], "mpo": mpo},
            "setup_seconds": {"sac": 1.0, "mpo": 2.0},
        }

    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text(json.dumps(record("old1234", [15.0, 20.0, 12.0])))
    (results / "b.json").write_text(json.dumps(record("new5678", [10.0, 10.0, 10.0])))
    monkeypatch.setattr(update_cost, "commit_time", {"old1234": 100, "new5678": 200}.get)
    reading = tmp_path / "reading.md"
    reading.write_text("**What the numbers say.**\n")
    page = tmp_path / "page.md"
    update_cost.write_page(results, page, reading)
    text = page.read_text()
    assert text.index("## Reading") < text.index("**What the numbers say.**") < text.index("## Pendulum-v1, commit new5678")
    assert text.index("commit new5678") < text.index("commit old1234")
    # per round 1.5, 1.0 and 1.2 (not the ratio of medians, 15 / 10): the median is 1.20
    assert "| MPO | 15.00 | 12.00-20.00 | 1.20 | 2 |" in text
    assert "| MPO | 10.00 | 10.00-10.00 | 1.00 | 2 |" in text  # per round 1.0, 0.5 and 1.0


def test_curve_summaries_average_the_last_evaluations_and_the_whole_run():
    """Late return and mean over the run, per seed and over seeds, against sums done by hand; a run with fewer
    evaluations than the late window is averaged over all of them."""

    def run(*means: float) -> dict:
        return {"curve": [{"step": 10 * (index + 1), "mean": mean} for index, mean in enumerate(means)]}

    first, second, short = run(0.0, 100.0, 400.0, 200.0, 300.0), run(50.0, 50.0, 50.0, 50.0, 1000.0), run(10.0, 30.0)
    assert late_return(first) == (400.0 + 200.0 + 300.0) / 3 and mean_over_run(first) == 1000.0 / 5
    assert late_return(second) == 1100.0 / 3 and mean_over_run(second) == 1200.0 / 5
    assert late_return(short) == mean_over_run(short) == 20.0
    table = curve_summary_table({"mpo": [first, second], "sac": [short]})
    assert table[2] == f"| MPO | 2 | {(300.0 + 1100.0 / 3) / 2:.1f} | 300, 367 | {(200.0 + 240.0) / 2:.1f} | 200, 240 |"
    assert table[3] == "| SAC | 1 | 20.0 | 20 | 20.0 | 20 |"
    assert late_training_return(first) is None


def test_training_returns_join_the_curve_summary_where_recorded():
    """The behaviour policy's return over the last windows: a mean of what was recorded, "—" where nothing was."""

    def run(*training: float | None) -> dict:
        points = [{"step": 10 * (index + 1), "mean": 0.0, "train": {} if value is None else {TRAINING_RETURN: value}}
                  for index, value in enumerate(training)]  # fmt: skip
        return {"curve": points}

    full, gap, early_only = run(1.0, 10.0, 20.0, 60.0), run(5.0, None, 30.0, None), run(7.0, None, None, None)
    assert late_training_return(full) == 30.0 and late_training_return(gap) == 30.0
    assert late_training_return(early_only) is None and late_training_return(full, evaluations=1) == 60.0
    table = curve_summary_table({"mpo": [full, gap, early_only], "sac": [early_only]})
    assert table[0].endswith("| training episodes' return, last 3 windows | per seed |") and table[1].count("---") == 8
    assert table[2].endswith("| 30.0 | 30, 30, — |") and table[3].endswith("| — | — |")
