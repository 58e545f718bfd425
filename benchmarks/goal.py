"""
A suite's goal, set in its file before its runs (``goal:``), and its judgement from the stored runs, which the page
shows above the maintainers' reading, so that whether the goal is met is computed, not typed.

.. code-block:: yaml

    goal:
      algo: mpo_ln_brn_adam          # the algorithm judged (default: the suite's reference MPO configuration)
      at_or_above: [sac, tqc]        # its aggregate IQM at or above each of theirs
      where_run: [tqc]               # criteria against these count only where their runs judge them
      floor: {sac: 0.9}              # on every environment, its mean final return at or above 0.9x SAC's
      stretch: [crossq_256]          # a stretch goal: its aggregate IQM at or above each of theirs

A criterion whose runs are missing is not judged (and says why); the goal is met when every criterion of
``at_or_above`` and ``floor`` is judged and met, not met when one is judged and not met, and undecided otherwise. A
criterion against an algorithm of ``where_run`` that is not judged is left out of the verdict ("at or above TQC's,
where TQC ran"). The stretch goal is judged the same way on its own.
"""

from dataclasses import dataclass, field
from typing import Any

#: The keys a suite's ``goal`` accepts
GOAL_KEYS = ("algo", "at_or_above", "floor", "stretch", "where_run")


@dataclass(frozen=True)
class Goal:
    """What the suite's algorithm must reach, against which algorithms of the suite."""

    algo: str
    at_or_above: tuple[str, ...] = ()
    floors: dict[str, float] = field(default_factory=dict)  # baseline -> share of its mean on every environment
    stretch: tuple[str, ...] = ()
    where_run: tuple[str, ...] = ()  # algorithms whose criteria count only where their runs judge them

    def algorithms(self) -> set[str]:
        """:return: Every algorithm the goal reads: the judged one and those of its criteria"""
        return {self.algo, *self.at_or_above, *self.floors, *self.stretch}


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
    optional: bool = False  # left out of the verdict where not judged (an algorithm of the goal's ``where_run``)
    bar: float | None = None  # what ``value`` must reach where that is not ``other`` itself (a floor's share of it)


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
        if not condition:
            raise ValueError(f"Suite {where}{key}: {message}")

    require(isinstance(spec, dict) and set(spec) <= set(GOAL_KEYS), "", f"must map some of {GOAL_KEYS}, got {spec!r}")
    algo = spec.get("algo", reference)
    require(algo in algos, ".algo", f"must name an algorithm the suite runs, one of {sorted(algos)}, got {algo!r}")
    lists = {}
    for key in ("at_or_above", "stretch", "where_run"):
        names = spec.get(key) or []
        require(isinstance(names, list), f".{key}", f"must be a list of algorithms, got {names!r}")
        unknown = [name for name in names if name not in algos or name == algo]
        require(not unknown, f".{key}", f"names {unknown}: expected other algorithms the suite runs, among {sorted(algos)}")
        lists[key] = tuple(names)
    floors = spec.get("floor") or {}
    require(isinstance(floors, dict), ".floor", f"must map algorithms to a share of their mean, got {floors!r}")
    for name, share in floors.items():
        require(
            name in algos and name != algo,
            f".floor.{name}",
            f"expected another algorithm the suite runs, among {sorted(algos)}",
        )
        require(isinstance(share, (int, float)) and share > 0, f".floor.{name}", f"must be a number above 0, got {share!r}")
    compared = {*lists["at_or_above"], *lists["stretch"], *floors}
    require(
        set(lists["where_run"]) <= compared,
        ".where_run",
        f"must name algorithms the goal compares with, among {sorted(compared)}",
    )
    require(bool(compared), "", "names no criterion: give at_or_above, floor or stretch")
    shares = {name: float(share) for name, share in floors.items()}
    return Goal(algo, lists["at_or_above"], shares, lists["stretch"], lists["where_run"])


def judge_goal(goal: Goal, iqms: dict[str, float], means: dict[str, dict[str, float]], envs: list[str]) -> list[Criterion]:
    """
    Judge each criterion of the goal.

    :param goal: The goal
    :param iqms: The aggregate IQM of each algorithm that ran on every environment (the others have none)
    :param means: Environment -> algorithm -> its mean final return over its stored runs there
    :param envs: The suite's environments, each of which a floor judges
    :return: The criteria: the IQM comparisons of ``at_or_above``, the floors per environment, then the stretch goal's
    """

    def aggregate(other: str, stretch: bool) -> Criterion:
        description = f"IQM at or above {other.upper()}'s" + (
            f", where {other.upper()} ran" if other in goal.where_run else ""
        )
        value, baseline, optional = iqms.get(goal.algo), iqms.get(other), other in goal.where_run
        if value is None or baseline is None:
            absent = [name.upper() for name, iqm in ((goal.algo, value), (other, baseline)) if iqm is None]
            reason = f"{' and '.join(absent)} not in the aggregate (a stored run on every environment)"
            return Criterion(description, other, True, value, baseline, None, reason, stretch, optional)
        return Criterion(description, other, True, value, baseline, bool(value >= baseline), "", stretch, optional)

    def floor(env: str, other: str, share: float) -> Criterion:
        description = f"{env}: mean at or above {share:g}x {other.upper()}'s"
        value, baseline = means.get(env, {}).get(goal.algo), means.get(env, {}).get(other)
        if value is None or baseline is None:
            absent = [name.upper() for name, mean in ((goal.algo, value), (other, baseline)) if mean is None]
            return Criterion(description, other, False, value, baseline, None, f"no stored run of {' and '.join(absent)}")
        if baseline <= 0:
            reason = f"{other.upper()}'s mean is not above 0: no share of it is a floor"
            return Criterion(description, other, False, value, baseline, None, reason)
        return Criterion(description, other, False, value, baseline, bool(value >= share * baseline), bar=share * baseline)

    return [
        *(aggregate(other, stretch=False) for other in goal.at_or_above),
        *(floor(env, other, share) for other, share in goal.floors.items() for env in envs),
        *(aggregate(other, stretch=True) for other in goal.stretch),
    ]


def verdict(criteria: list[Criterion]) -> bool | None:
    """
    :return: False if a judged criterion is not met, True if all are judged (an optional one may be left unjudged)
        and met, None otherwise (undecided)
    """
    counted = [criterion for criterion in criteria if criterion.met is not None or not criterion.optional]
    if any(criterion.met is False for criterion in counted):
        return False
    return True if counted and all(criterion.met for criterion in counted) else None
