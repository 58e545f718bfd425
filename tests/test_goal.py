"""A suite's goal: parsed with named errors, judged from stored runs, and shown on the page (benchmarks/goal.py)."""

import re

import numpy as np
import pytest
from scipy import stats

from benchmarks.goal import Criterion, Goal, floor_of, judge_goal, parse_goal, verdict
from benchmarks.references import D4RL
from benchmarks.report import goal_section

ALGOS = ["mpo_entry", "mpo_other", "sac", "tqc", "crossq"]


def parse(spec):
    return parse_goal(spec, ALGOS, "mpo_entry", "suite.yml: goal")


def test_parse_goal_defaults_to_the_reference_and_keeps_each_criterion():
    assert parse(None) is None
    goal = parse({"at_or_above": ["sac", "tqc"], "floor": {"sac": 0.9}, "stretch": ["crossq"], "where_run": ["tqc"]})
    assert goal == Goal("mpo_entry", ("sac", "tqc"), (("sac", 0.9),), ("crossq",), ("tqc",))
    assert goal.algorithms() == {"mpo_entry", "sac", "tqc", "crossq"}
    assert parse({"algo": "mpo_other", "floor": {"mpo_entry": 1}}).floors == (("mpo_entry", 1.0),)
    assert hash(goal) == hash(
        parse({"at_or_above": ["sac", "tqc"], "floor": {"sac": 0.9}, "stretch": ["crossq"], "where_run": ["tqc"]})
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"at_or_above": ["sac"], "beat": ["sac"]}, r"suite.yml: goal: must map some of \('algo', .*\), got"),
        ({"algo": "ppo", "at_or_above": ["sac"]}, r"goal.algo: must name an algorithm the suite runs, one of .*got 'ppo'"),
        ({"at_or_above": ["sac", "ppo"]}, r"goal.at_or_above: names \['ppo'\]: expected other algorithms the suite runs"),
        ({"at_or_above": ["mpo_entry"]}, r"goal.at_or_above: names \['mpo_entry'\]"),
        ({"stretch": "crossq"}, r"goal.stretch: must be a list of algorithms, got 'crossq'"),
        ({"floor": {"sac": 0}}, r"goal.floor.sac: must be a finite number above 0, got 0"),
        ({"floor": {"sac": True}}, r"goal.floor.sac: must be a finite number above 0, got True"),
        ({"floor": {"sac": float("inf")}}, r"goal.floor.sac: must be a finite number above 0, got inf"),
        ({"floor": 0}, r"goal.floor: must map algorithms to a share of their mean, got 0"),
        ({"floor": {"sac": 0.9}, "stretch": ""}, r"goal.stretch: must be a list of algorithms, got ''"),
        ({"at_or_above": ["sac", "sac"]}, r"goal.at_or_above: names an algorithm twice: \['sac', 'sac'\]"),
        ({"at_or_above": ["sac"], "stretch": ["sac"]}, r"goal.stretch: names \['sac'\], which at_or_above names already"),
        ({"stretch": ["crossq"]}, r"goal: needs a criterion of the goal itself: give at_or_above or floor"),
        ({"floor": {"ppo": 0.9}}, r"goal.floor.ppo: expected another algorithm the suite runs"),
        ({"floor": [0.9]}, r"goal.floor: must map algorithms to a share of their mean, got \[0.9\]"),
        ({"at_or_above": ["sac"], "where_run": ["tqc"]}, r"goal.where_run: must name algorithms the goal compares with"),
        ({"algo": "mpo_entry"}, r"goal: needs a criterion of the goal itself: give at_or_above or floor"),
    ],
)
def test_parse_goal_names_the_key_and_value_it_refuses(spec, message):
    with pytest.raises(ValueError, match=message):
        parse(spec)


def test_judge_goal_compares_iqms_and_each_environments_means():
    goal = Goal("mpo", ("sac", "tqc"), (("sac", 0.9),), ("crossq",), ("tqc",))
    means = {
        "A": {"mpo": 95.0, "sac": 100.0, "crossq": 1.0},
        "B": {"mpo": 80.0, "sac": 100.0},
        "C": {"mpo": -5.0, "sac": -3.0},
    }
    criteria = judge_goal(goal, {"mpo": 0.5, "sac": 0.5, "crossq": 0.6}, means, ["A", "B", "C", "D"])
    by_name = {criterion.description: criterion for criterion in criteria}
    assert list(by_name) == [
        "IQM at or above SAC's",
        "IQM at or above TQC's, if TQC runs on every environment",
        "A: mean at most 10% below SAC's",
        "B: mean at most 10% below SAC's",
        "C: mean at most 10% below SAC's",
        "D: mean at most 10% below SAC's",
        "IQM at or above CROSSQ's",
    ]
    assert by_name["IQM at or above SAC's"].met is True  # a tie is at or above
    tqc = by_name["IQM at or above TQC's, if TQC runs on every environment"]
    assert tqc.met is None and tqc.optional and tqc.reason == "TQC without stored runs on every environment"
    assert by_name["A: mean at most 10% below SAC's"].met is True and by_name["A: mean at most 10% below SAC's"].bar == 90.0
    assert by_name["B: mean at most 10% below SAC's"].met is False
    negative = by_name["C: mean at most 10% below SAC's"]  # 10% of |−3| below −3: −3.3
    assert negative.bar == pytest.approx(-3.3) and negative.met is False
    assert by_name["D: mean at most 10% below SAC's"].reason == "no stored run of MPO and SAC"
    assert not by_name["D: mean at most 10% below SAC's"].optional  # SAC is not excused
    assert by_name["IQM at or above CROSSQ's"].stretch and by_name["IQM at or above CROSSQ's"].met is False


def test_where_run_excuses_only_the_other_algorithms_missing_runs():
    goal = Goal("mpo", ("tqc",), (("tqc", 0.9),), where_run=("tqc",))
    without_mpo = judge_goal(goal, {"tqc": 0.4}, {"A": {"tqc": 10.0}}, ["A"])
    assert [criterion.optional for criterion in without_mpo] == [False, False]  # MPO's own runs are missing
    assert verdict(without_mpo) is None
    without_tqc = judge_goal(goal, {"mpo": 0.4}, {"A": {"mpo": 10.0}}, ["A"])
    assert [criterion.optional for criterion in without_tqc] == [True, True]  # the floor as well as the IQM
    assert verdict(without_tqc) is None  # nothing left to judge
    judged = judge_goal(goal, {"mpo": 0.4, "tqc": 0.5}, {"A": {"mpo": 10.0, "tqc": 10.0}}, ["A"])
    assert [criterion.met for criterion in judged] == [False, True] and verdict(judged) is False


@pytest.mark.parametrize("mean, share, floor", [(100.0, 0.9, 90.0), (-200.0, 0.9, -220.0), (50.0, 1.2, 60.0), (0.0, 0.5, 0.0)])
def test_floor_is_the_share_of_a_positive_mean_and_as_far_below_a_negative_one(mean, share, floor):
    assert floor_of(mean, share) == pytest.approx(floor)


def test_verdict_needs_every_counted_criterion_judged_and_met():
    def criterion(met, optional=False):
        return Criterion("c", "sac", True, 1.0, 1.0, met, optional=optional)

    assert verdict([criterion(True), criterion(True)]) is True
    assert verdict([criterion(True), criterion(None)]) is None
    assert verdict([criterion(None), criterion(False)]) is False
    assert verdict([criterion(True), criterion(None, optional=True)]) is True  # the other's runs missing: left out
    assert verdict([criterion(None, optional=True)]) is None
    assert verdict([]) is None


def test_goal_section_judges_the_iqm_of_normalised_returns_and_the_floors():
    """The IQMs of the page's aggregate (D4RL's scale), checked against scipy's 25%-trimmed mean of the scores."""
    finals = {
        "Hopper-v5": {"mpo": [1000.0, 2000.0, 3000.0, 2500.0], "sac": [900.0, 1200.0, 1500.0, 1100.0]},
        "Walker2d-v5": {"mpo": [1500.0, 2500.0, 2000.0, 2200.0], "sac": [2000.0, 2100.0, 1800.0, 1900.0]},
    }
    results = {
        env: {algo: [{"final_return": value} for value in values] for algo, values in runs.items()}
        for env, runs in finals.items()
    }
    goal = Goal("mpo", ("sac",), (("sac", 0.9),))
    lines = goal_section(results, goal, list(finals), D4RL, stored=16, planned=18)
    iqm = {}
    for algo in ("mpo", "sac"):
        scores = [
            (value - low) / (high - low) for env in finals for low, high in [D4RL.range_of(env)] for value in finals[env][algo]
        ]
        iqm[algo] = stats.trim_mean(scores, 0.25)
    row = next(line for line in lines if line.startswith("| IQM at or above SAC's"))
    runs = r"\(4 runs per env\)"
    assert re.match(
        rf"\| IQM at or above SAC's \| {iqm['mpo']:.2f} \[.*\] {runs} \| {iqm['sac']:.2f} \[.*\] {runs} \| met \|$", row
    )
    walker = np.mean(finals["Walker2d-v5"]["mpo"])  # 2050 against a floor of 0.9 x 1950 = 1755
    assert f"| Walker2d-v5: mean at most 10% below SAC's | {walker:.1f} | 1950.0 (floor 1755.0) | met |" in lines
    assert "| Hopper-v5: mean at most 10% below SAC's | 2125.0 | 1175.0 (floor 1057.5) | met |" in lines
    assert lines[-1] == "Goal: **met**."
    assert "(16 of 18 runs of the algorithms it reads; the verdict may change as the others land)" in lines[0]

    finals["Walker2d-v5"]["mpo"] = [1500.0, 1600.0, 1700.0, 1800.0]  # 1650, below the floor
    results["Walker2d-v5"]["mpo"] = [{"final_return": value} for value in finals["Walker2d-v5"]["mpo"]]
    stretched = Goal("mpo", ("sac",), (("sac", 0.9),), ("crossq",))
    lines = goal_section(results, stretched, list(finals), D4RL, stored=18, planned=18)
    assert "| Walker2d-v5: mean at most 10% below SAC's | 1650.0 | 1950.0 (floor 1755.0) | not met |" in lines
    assert lines[-1] == "Goal: **not met**. Stretch goal: **undecided**."
    assert "(18 of 18 runs of the algorithms it reads)" in lines[0]


def test_goal_section_judges_no_iqm_while_an_environment_has_no_stored_run():
    """A planned environment without runs leaves the IQMs unjudged and its floor unmet, so the goal cannot read met."""
    results = {"Hopper-v5": {algo: [{"final_return": final}] * 2 for algo, final in (("mpo", 3000.0), ("sac", 1000.0))}}
    lines = goal_section(results, Goal("mpo", ("sac",), (("sac", 0.9),)), ["Hopper-v5", "Walker2d-v5"], D4RL, 4, 8)
    assert "| IQM at or above SAC's | — | — | not judged: MPO and SAC without stored runs on every environment |" in lines
    assert "| Walker2d-v5: mean at most 10% below SAC's | — | — | not judged: no stored run of MPO and SAC |" in lines
    assert "| Hopper-v5: mean at most 10% below SAC's | 3000.0 | 1000.0 (floor 900.0) | met |" in lines
    assert lines[-1] == "Goal: **undecided**."
