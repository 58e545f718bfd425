"""
A suite's goal, stated in its file (``goal:``), and its judgement from the stored runs, which the page shows above the
maintainers' reading, so that whether the goal is met is computed, not typed.

.. code-block:: yaml

    goal:
      algo: mpo_ln_brn_adam          # the algorithm judged (default: the suite's reference MPO configuration)
      at_or_above: [sac, tqc]        # its aggregate IQM at or above each of theirs
      where_run: [tqc]               # criteria against these are left out of the verdict where these lack runs
      floor: {sac: 0.9}              # on every environment, its mean final return at most 10% below SAC's
      stretch: [crossq_256]          # a stretch goal: its aggregate IQM at or above each of theirs

A criterion whose runs are missing is not judged (and says why); the goal is met when every criterion of
``at_or_above`` and ``floor`` is judged and met, not met when one is judged and not met, and undecided otherwise. A
criterion against an algorithm of ``where_run`` is left out of the verdict while that algorithm lacks runs ("and TQC's,
where it runs"); the judged algorithm's own missing runs leave the goal undecided. The stretch goal is judged the same
way on its own. An IQM comparison compares the point estimates; the page shows their intervals beside them. A floor of
share s under a mean m is m − (1 − s)·|m|: s·m for a positive mean, as far below a negative one.
"""

import math
from dataclasses import dataclass
from typing import Any

#: The keys a suite's ``goal`` accepts
GOAL_KEYS = ("algo", "at_or_above", "floor", "stretch", "where_run")


@dataclass(frozen=True)
class Goal:
    """What the suite's algorithm must reach, against which algorithms of the suite."""

    algo: str
    at_or_above: tuple[str, ...] = ()
    floors: tuple[tuple[str, float], ...] = ()  # (other algorithm, share of its mean) on every environment
    stretch: tuple[str, ...] = ()
    where_run: tuple[str, ...] = ()  # algorithms whose criteria are left out of the verdict where they lack runs

    def algorithms(self) -> set[str]:
        """:return: Every algorithm the goal reads: the judged one and those of its criteria"""
        return {self.algo, *self.at_or_above, *(name for name, _ in self.floors), *self.stretch}


@dataclass(frozen=True)
class Criterion:
    """
    One comparison of a goal: ``met`` is True or False where the stored runs judge it, None where they cannot, and
    ``reason`` then says why.
    """

    description: str
    against: str  # the other algorithm
    aggregate: bool  # an IQM comparison (else a floor of one environment's means)
    value: float | None
    other: float | None
    met: bool | None
    reason: str = ""
    stretch: bool = False
    optional: bool = False  # left out of the verdict while not judged (the other algorithm, of ``where_run``, lacks runs)
    bar: float | None = None  # what ``value`` must reach where that is not ``other`` itself (a floor)


def floor_of(mean: float, share: float) -> float:
    """:return: The floor of ``share`` under ``mean``: mean − (1 − share)·|mean| (share·mean for a positive mean)"""
    return mean - (1.0 - share) * abs(mean)


def _names(spec: dict[str, Any], key: str, algos: list[str], algo: str, require: Any) -> tuple[str, ...]:
    """:return: The list of other algorithms under ``key`` (empty where the key is absent), checked"""
    names = spec.get(key)
    if names is None:
        return ()
    require(isinstance(names, list), f".{key}", f"must be a list of algorithms, got {names!r}")
    unknown = [name for name in names if name not in algos or name == algo]
    require(not unknown, f".{key}", f"names {unknown}: expected other algorithms the suite runs, among {sorted(algos)}")
    require(len(set(names)) == len(names), f".{key}", f"names an algorithm twice: {names}")
    return tuple(names)


def parse_goal(spec: Any, algos: list[str], reference: str, where: str) -> Goal | None:
    """
    :param spec: The suite file's ``goal`` (None: the suite sets none)
    :param algos: The algorithms the suite runs (names as its ``envs`` give them)
    :param reference: The suite's reference MPO configuration, the judged algorithm where ``algo`` is not given
    :param where: The file and key, for errors
    :return: The goal
    """
    if spec is None:
        return None

    def require(condition: bool, key: str, message: str) -> None:
        """Raise a ValueError naming the goal's key when ``condition`` does not hold."""
        if not condition:
            raise ValueError(f"Suite {where}{key}: {message}")

    require(isinstance(spec, dict) and set(spec) <= set(GOAL_KEYS), "", f"must map some of {GOAL_KEYS}, got {spec!r}")
    algo = spec.get("algo", reference)
    require(algo in algos, ".algo", f"must name an algorithm the suite runs, one of {sorted(algos)}, got {algo!r}")
    at_or_above, stretch, where_run = (
        _names(spec, key, algos, algo, require) for key in ("at_or_above", "stretch", "where_run")
    )
    both = sorted(set(at_or_above) & set(stretch))
    require(not both, ".stretch", f"names {both}, which at_or_above names already")
    floors = spec.get("floor")
    floors = {} if floors is None else floors
    require(isinstance(floors, dict), ".floor", f"must map algorithms to a share of their mean, got {floors!r}")
    for name, share in floors.items():
        require(
            name in algos and name != algo,
            f".floor.{name}",
            f"expected another algorithm the suite runs, among {sorted(algos)}",
        )
        number = isinstance(share, (int, float)) and not isinstance(share, bool)
        require(
            number and math.isfinite(share) and share > 0, f".floor.{name}", f"must be a finite number above 0, got {share!r}"
        )
    require(bool(at_or_above) or bool(floors), "", "needs a criterion of the goal itself: give at_or_above or floor")
    compared = {*at_or_above, *stretch, *floors}
    require(set(where_run) <= compared, ".where_run", f"must name algorithms the goal compares with, among {sorted(compared)}")
    shares = tuple((name, float(share)) for name, share in floors.items())
    return Goal(algo, at_or_above, shares, stretch, where_run)


def judge_goal(goal: Goal, iqms: dict[str, float], means: dict[str, dict[str, float]], envs: list[str]) -> list[Criterion]:
    """
    Judge each criterion of the goal.

    :param goal: The goal
    :param iqms: The aggregate IQM of each algorithm with stored runs on every one of ``envs`` (the others have none)
    :param means: Environment -> algorithm -> its mean final return over its stored runs there
    :param envs: The suite's environments, each of which a floor judges
    :return: The criteria: the IQM comparisons of ``at_or_above``, the floors per environment, then the stretch goal's
    """

    def excused(other: str, value: float | None, baseline: float | None) -> bool:
        """Whether the criterion is left out of the verdict: only the other algorithm's runs are missing, and it may."""
        return other in goal.where_run and value is not None and baseline is None

    def aggregate(other: str, stretch: bool) -> Criterion:
        """The IQM comparison with ``other``."""
        condition = f", if {other.upper()} runs on every environment" if other in goal.where_run else ""
        description = f"IQM at or above {other.upper()}'s{condition}"
        value, baseline = iqms.get(goal.algo), iqms.get(other)
        if value is None or baseline is None:
            absent = [name.upper() for name, iqm in ((goal.algo, value), (other, baseline)) if iqm is None]
            reason = f"{' and '.join(absent)} without stored runs on every environment"
            return Criterion(description, other, True, value, baseline, None, reason, stretch, excused(other, value, baseline))
        return Criterion(description, other, True, value, baseline, bool(value >= baseline), "", stretch)

    def floor(env: str, other: str, share: float) -> Criterion:
        """The floor under ``other``'s mean on ``env``."""
        change = f"at most {1 - share:.0%} below" if share <= 1 else f"at least {share - 1:.0%} above"
        description = f"{env}: mean {change} {other.upper()}'s"
        value, baseline = means.get(env, {}).get(goal.algo), means.get(env, {}).get(other)
        if value is None or baseline is None:
            absent = [name.upper() for name, mean in ((goal.algo, value), (other, baseline)) if mean is None]
            reason = f"no stored run of {' and '.join(absent)}"
            return Criterion(
                description, other, False, value, baseline, None, reason, optional=excused(other, value, baseline)
            )
        bar = floor_of(baseline, share)
        return Criterion(description, other, False, value, baseline, bool(value >= bar), bar=bar)

    return [
        *(aggregate(other, stretch=False) for other in goal.at_or_above),
        *(floor(env, other, share) for other, share in goal.floors for env in envs),
        *(aggregate(other, stretch=True) for other in goal.stretch),
    ]


def verdict(criteria: list[Criterion]) -> bool | None:
    """
    :return: False if a judged criterion is not met, True if all are judged and met (the ``optional`` ones, not
        judged, left out), None otherwise (undecided)
    """
    counted = [criterion for criterion in criteria if not criterion.optional]
    if any(criterion.met is False for criterion in counted):
        return False
    return True if counted and all(criterion.met for criterion in counted) else None
