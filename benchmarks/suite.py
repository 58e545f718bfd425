"""
Benchmark suites: a YAML file that names a grid of (algorithm, environment, seed, budget) runs.

.. code-block:: yaml

    name: quick
    description: A few hours of a 2-core machine.
    page: docs/quick.md            # optional: where `report` writes the page (default docs/results/<name>.md)
    eval_episodes: 10               # deterministic evaluation episodes per evaluation (>= 10 for published suites)
    normalisation: d4rl             # optional: the aggregate's fixed reference returns (benchmarks/references.py);
                                    # without it, the worst and best run on the page
    goal: {at_or_above: [sac]}      # optional: what the page judges from the stored runs (benchmarks/goal.py)
    paired_evaluation: mean_action  # optional: after each evaluation of an MPO run with clipped actions, the same policy
                                    # again with the clipped Gaussian's mean as its deterministic action
    budget_multiplier: {ppo: 10}    # on-policy baselines train for 10x the environment's budget
    envs:
      Pendulum-v1:
        steps: 20000                # the off-policy budget N
        eval_freq: 2000             # evaluate every eval_freq steps (scaled by the algorithm's budget multiplier)
        threshold: -200             # optional: the report counts the seeds whose evaluation reaches it, and when
        seeds: [0, 1, 2, 3, 4]
        algos: [mpo, sac, ppo]
        algo_seeds:                 # optional: algorithms that run only some of the env's seeds (a screened variant)
          ppo: [0, 1]
        hyperparams:                # optional overrides of the RL Zoo entry, per algorithm (RL Zoo's format)
          mpo: {learning_starts: 500}
      Hopper-v5:
        zoo_entry: Hopper-v4        # for algorithms whose RL Zoo file has no Hopper-v5 entry: use its Hopper-v4 one
        ...
    variants:                       # optional: named variants of an algorithm, usable in any env's algos
      mpo_1step: {algo: mpo, hyperparams: {q_target: n_step, n_steps: 1}}

A suite of ``kind: exploration`` (default ``returns``) measures state coverage instead of returns: its ``algos`` are
the learners of :mod:`benchmarks.exploration` (``random``, ``mpo``, ``sac``, ``mpo_smm1``, ``mpo_smm4``), trained
without RL Zoo, and it takes neither ``variants``, ``zoo_entry``, ``hyperparams``, ``budget_multiplier``, ``goal`` nor
``paired_evaluation``.

Every algorithm trains with RL Zoo's entry for the environment (rl_zoo3's tuned files; sb3-mpo's own file for MPO),
through rl_zoo3's experiment manager, so normalisation, ``n_envs``, wrappers and schedules are those of RL Zoo.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.goal import Goal, parse_goal
from benchmarks.references import REFERENCES, ScoreReference

#: The second evaluations a suite may ask for (``paired_evaluation:``, run by benchmarks.checkpoints.PairedEvaluation):
#: MPO's clipped Gaussian's mean as the deterministic action, beside its mode
PAIRED_EVALUATIONS = ("mean_action",)
#: Algorithms a suite may name: MPO and the SB3 / sb3-contrib algorithms rl_zoo3 has tuned files for
KNOWN_ALGOS = ("mpo", "sac", "td3", "tqc", "ddpg", "ppo", "trpo", "a2c", "dqn", "qrdqn", "crossq", "ars")
#: What a suite measures: returns of RL Zoo-configured runs, or the state coverage of exploration learners
SUITE_KINDS = ("returns", "exploration")
#: The repository's benchmarks/ folder: this package, its suites and its stored results
BENCHMARKS_DIR = Path(__file__).resolve().parent
#: Where ``load_suite("quick")`` looks when given a bare name
SUITES_DIR = BENCHMARKS_DIR / "suites"
#: Where result files are stored by default, one folder per suite
RESULTS_DIR = BENCHMARKS_DIR / "results"


@dataclass(frozen=True)
class Job:
    """One training run of a suite: an algorithm on an environment with one seed and one budget."""

    suite: str
    algo: str  # the algorithm's name in the suite: an algorithm, or a variant of one
    env: str
    seed: int
    steps: int
    eval_freq: int
    eval_episodes: int
    hyperparams: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    zoo_entry: str | None = None
    base_algo: str = ""  # the algorithm a variant runs ("" : ``algo`` itself)
    kind: str = "returns"  # the suite's kind (see SUITE_KINDS)
    # a second evaluation of the same policy after each evaluation (benchmarks.checkpoints.PairedEvaluation; None: none)
    paired_evaluation: str | None = field(default=None, compare=False)

    @property
    def zoo_algo(self) -> str:
        """The algorithm RL Zoo trains (``algo``, or the algorithm of a variant)."""
        return self.base_algo or self.algo

    @property
    def env_folder(self) -> str:
        """The environment's id as one path component (a namespaced id ``ns/Name-v0`` becomes ``ns-Name-v0``)."""
        return self.env.replace("/", "-")

    @property
    def name(self) -> str:
        return f"{self.algo}_{self.env_folder}_seed{self.seed}_{self.steps}"

    @property
    def eval_seed(self) -> int:
        """The seed of the run's evaluation environments, apart from the training seeds: 10,000 + ``seed``."""
        return 10_000 + self.seed

    def result_path(self, results_dir: Path) -> Path:
        """The run's result file: ``<results_dir>/<suite>/<env>/<algo>_<env>_seed<k>_<steps>.json``."""
        return results_dir / self.suite / self.env_folder / f"{self.name}.json"

    def checkpoint_path(self, checkpoints_dir: Path) -> Path:
        """The run's mid-run checkpoint folder: ``<checkpoints_dir>/<suite>/<env>/<algo>_<env>_seed<k>_<steps>/``."""
        return checkpoints_dir / self.suite / self.env_folder / self.name

    def final_path(self, checkpoints_dir: Path) -> Path:
        """
        The run's final state, which ``run --keep-final`` keeps for a longer run to continue (``run --continue-from``):
        ``<checkpoints_dir>/<suite>/<env>/<algo>_<env>_seed<k>_<steps>.final/``.
        """
        return checkpoints_dir / self.suite / self.env_folder / f"{self.name}.final"


@dataclass
class Suite:
    name: str
    description: str
    jobs: list[Job]
    budget_multiplier: dict[str, int]
    path: Path
    thresholds: dict[str, float] = field(default_factory=dict)  # env -> return the report checks runs against
    page: Path | None = None  # the report's default page, relative to the repository root (None: docs/results/<name>.md)
    kind: str = "returns"  # what the suite measures (see SUITE_KINDS)
    reference: str = "mpo"  # the MPO configuration the report compares each other MPO configuration with
    normalisation: ScoreReference | None = None  # the aggregate's fixed reference returns (None: the page's worst, best run)
    goal: Goal | None = None  # what the page judges from the stored runs (benchmarks/goal.py; None: the suite sets none)

    @property
    def page_path(self) -> Path:
        """The report's default page (``page``, or ``docs/results/<name>.md``), under the checkout holding ``benchmarks/``."""
        return BENCHMARKS_DIR.parent / (self.page or Path("docs") / "results" / f"{self.name}.md")

    def envs(self) -> list[str]:
        return list(dict.fromkeys(job.env for job in self.jobs))

    def trains(self) -> dict[str, str]:
        """:return: Each algorithm name of the suite -> the algorithm it trains (a variant's base, else itself)"""
        return {job.algo: job.zoo_algo for job in self.jobs}


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ValueError(f"Suite {where}: {message}")


def _algo_seeds(settings: dict[str, Any], where: str) -> dict[str, list[int]]:
    """
    :param settings: An environment's settings in a suite file
    :param where: The file and key, for errors
    :return: ``algo_seeds``: the algorithms that run only some of the environment's seeds, and those seeds
    """
    algo_seeds = settings.get("algo_seeds") or {}
    _require(isinstance(algo_seeds, dict), f"{where}.algo_seeds", f"must map algorithms to lists of seeds, got {algo_seeds!r}")
    _require(set(algo_seeds) <= set(settings["algos"]), f"{where}.algo_seeds", "names an algorithm the env does not run")
    for algo, seeds in algo_seeds.items():
        _require(
            isinstance(seeds, list) and len(seeds) > 0 and set(seeds) <= set(settings["seeds"]),
            f"{where}.algo_seeds.{algo}",
            f"must be a non-empty list of the env's seeds {settings['seeds']}, got {seeds!r}",
        )
    return algo_seeds


def load_suite(name_or_path: str | Path) -> Suite:
    """
    Read and check a suite file; every problem is reported with the key it concerns, before anything runs.

    :param name_or_path: A YAML file, or the name of one in benchmarks/suites/ (``"quick"``)
    :return: The suite and its jobs, in a deterministic order (environment, seed, algorithm)
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = SUITES_DIR / f"{name_or_path}.yml"
    _require(path.is_file(), str(path), "no such file (give a path or the name of a file in benchmarks/suites/)")
    with open(path) as file:
        spec = yaml.safe_load(file) or {}
    name = spec.get("name", path.stem)
    kind = spec.get("kind", "returns")
    _require(kind in SUITE_KINDS, f"{path}: kind", f"must be one of {SUITE_KINDS}, got {kind!r}")
    exploration = kind == "exploration"
    if exploration:
        from benchmarks.exploration import LEARNERS

        for key in ("variants", "budget_multiplier", "goal", "paired_evaluation"):
            _require(key not in spec, f"{path}: {key}", "an exploration suite takes none")
    algos = tuple(LEARNERS) if exploration else KNOWN_ALGOS
    eval_episodes = int(spec.get("eval_episodes", 10))
    paired = spec.get("paired_evaluation")
    _require(
        paired in (None, *PAIRED_EVALUATIONS),
        f"{path}: paired_evaluation",
        f"must be one of {PAIRED_EVALUATIONS}, got {paired!r}",
    )
    _require(eval_episodes >= 1, f"{path}: eval_episodes", f"must be a positive integer, got {eval_episodes}")
    multiplier = {str(algo): int(factor) for algo, factor in (spec.get("budget_multiplier") or {}).items()}
    variants = spec.get("variants") or {}
    for variant, definition in variants.items():
        where = f"{path}: variants.{variant}"
        _require(isinstance(definition, dict) and definition.get("algo") in KNOWN_ALGOS, where,
                 f"needs an 'algo' among {KNOWN_ALGOS}")  # fmt: skip
        _require(set(definition) <= {"algo", "hyperparams"}, where, "accepts the keys 'algo' and 'hyperparams' only")
    envs = spec.get("envs") or {}
    _require(isinstance(envs, dict) and len(envs) > 0, f"{path}: envs", "must map environment ids to their settings")

    jobs, thresholds = [], {}
    for env_id, settings in envs.items():
        where = f"{path}: envs.{env_id}"
        missing = {"steps", "seeds", "algos"} - set(settings)
        _require(not missing, where, f"missing keys {sorted(missing)}")
        unknown = set(settings["algos"]) - set(algos) - set(variants)
        _require(not unknown, f"{where}.algos", f"unknown algorithms {sorted(unknown)}, expected some of {algos} or a variant")
        if exploration:
            for key in ("zoo_entry", "hyperparams"):
                _require(key not in settings, f"{where}.{key}", "an exploration suite takes none")
        steps, eval_freq = int(settings["steps"]), int(settings.get("eval_freq", settings["steps"]))
        _require(steps >= 1 and 1 <= eval_freq <= steps, where, f"need 1 <= eval_freq <= steps, got {eval_freq}, {steps}")
        if settings.get("threshold") is not None:
            thresholds[env_id] = float(settings["threshold"])
        overrides = settings.get("hyperparams") or {}
        _require(set(overrides) <= set(settings["algos"]), f"{where}.hyperparams", "names an algorithm the env does not run")
        seeds_of = _algo_seeds(settings, where)
        for seed in settings["seeds"]:
            for algo in settings["algos"]:
                if seed not in seeds_of.get(algo, settings["seeds"]):
                    continue
                variant = variants.get(algo, {})
                factor = multiplier.get(algo, multiplier.get(variant.get("algo", algo), 1))
                jobs.append(
                    Job(
                        suite=name,
                        algo=algo,
                        env=env_id,
                        seed=int(seed),
                        steps=steps * factor,
                        eval_freq=eval_freq * factor,
                        eval_episodes=eval_episodes,
                        hyperparams={**(variant.get("hyperparams") or {}), **(overrides.get(algo) or {})},
                        zoo_entry=settings.get("zoo_entry"),
                        base_algo=variant.get("algo", ""),
                        kind=kind,
                        paired_evaluation=paired,
                    )
                )
    _require(paired is None or any(job.zoo_algo == "mpo" for job in jobs), f"{path}: paired_evaluation",
             "pairs MPO's evaluations, and the suite runs no MPO configuration")  # fmt: skip
    page = Path(spec["page"]) if spec.get("page") is not None else None
    _require(page is None or (page.suffix == ".md" and not page.is_absolute()), f"{path}: page",
             f"must be a relative .md path, got {page}")  # fmt: skip
    reference = spec.get("reference", "mpo")
    mpo_configurations = sorted({job.algo for job in jobs if job.zoo_algo == "mpo"})
    _require("reference" not in spec or reference in mpo_configurations, f"{path}: reference",
             f"must name an MPO configuration the suite runs, one of {mpo_configurations}, got {reference!r}")  # fmt: skip
    normalisation = _normalisation(spec.get("normalisation"), list(envs), f"{path}: normalisation")
    goal = parse_goal(spec.get("goal"), list(dict.fromkeys(job.algo for job in jobs)), reference, f"{path}: goal")
    return Suite(
        name, str(spec.get("description", "")), jobs, multiplier, path, thresholds, page, kind, reference, normalisation, goal
    )


def _normalisation(name: Any, envs: list[str], where: str) -> ScoreReference | None:
    """
    :param name: The suite's ``normalisation`` (None: the page's worst and best run)
    :param envs: The suite's environments, each of which the reference must score
    :param where: The file and key, for errors
    :return: The fixed reference returns the suite names
    """
    if name is None:
        return None
    _require(name in REFERENCES, where, f"must be one of {sorted(REFERENCES)}, got {name!r}")
    reference = REFERENCES[name]
    unscored = [env for env in envs if not reference.covers(env)]
    _require(not unscored, where, f"{name} has no reference returns for {unscored} (it scores {sorted(reference.scores)})")
    return reference
