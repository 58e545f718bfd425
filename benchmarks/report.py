"""
Generate docs pages (markdown tables and learning-curve PNGs) from the result files stored by ``compare.py``.
Nothing in the generated pages is typed by hand: re-run this script after adding results.

    python benchmarks/report.py            # every report
    python benchmarks/report.py pendulum   # one of them
"""

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"


@dataclass
class Group:
    """One line of a comparison: the runs of ``algo`` stored under ``results/<tag>/`` for ``env``."""

    label: str
    tag: str
    algo: str
    env: str


@dataclass
class Report:
    title: str
    page: str
    intro: str
    sections: dict[str, list[Group]]  # section title -> groups compared in it
    speed: bool = False
    reading: str = ""  # the maintainers' written reading of the figures (the figures themselves are generated)


REPORTS = {
    "pendulum": Report(
        title="MPO vs SAC on Pendulum-v1",
        page="pendulum.md",
        intro=(
            "Five seeds, 20k environment steps each, deterministic evaluation over 10 episodes every 2k steps on a separate "
            "environment. SAC uses RL Zoo's tuned Pendulum-v1 entry (learning_rate 1e-3, otherwise SB3's defaults); MPO uses "
            "its shipped Pendulum-v1 entry (sb3_mpo/hyperparams/mpo.yml). MPO and SAC runs were interleaved, two at a time "
            "(one per core, one torch thread each), so both saw the same machine load. Speed is training wall-clock only "
            "(evaluation excluded). Produced by\n"
            "`python benchmarks/compare.py --algos mpo sac --env Pendulum-v1 --tag pendulum`."
        ),
        sections={
            "Pendulum-v1, 20k steps": [
                Group("MPO", "pendulum", "mpo", "Pendulum-v1"),
                Group("SAC (RL Zoo)", "pendulum", "sac", "Pendulum-v1"),
            ]
        },
        speed=True,
    ),
    "action_bounding": Report(
        title="Action bounding: clip + action penalty vs tanh squashing",
        page="action_bounding.md",
        intro=(
            "MPO's Gaussian lives in an unbounded space u; the action is clip(u) (with MO-MPO's action-penalty E-step pulling "
            "the policy back inside the box) or tanh(u). Everything else is identical: the shipped hyperparameters of each "
            "environment, deterministic evaluation over 10 episodes. The clip runs on Pendulum-v1 are the MPO runs of "
            "docs/pendulum.md. Wall-clock figures of these runs are not comparable (several ran at once) and are not shown."
        ),
        sections={
            "Pendulum-v1, 20k steps": [
                Group("clip + penalty", "pendulum", "mpo", "Pendulum-v1"),
                Group("tanh", "bounding_pendulum_tanh", "mpo", "Pendulum-v1"),
            ],
            "Hopper-v5, 25k steps": [
                Group("clip + penalty", "bounding_hopper_clip", "mpo", "Hopper-v5"),
                Group("tanh", "bounding_hopper_tanh", "mpo", "Hopper-v5"),
            ],
        },
        reading=(
            "At these budgets the two schemes cannot be told apart. On Pendulum-v1 the learning curves and final returns "
            "overlap seed for seed. On Hopper-v5 both are still at the start of learning at 25k steps (the MuJoCo entries "
            "use the untuned defaults, and a run of 1M steps takes hours on this machine): clip's evaluations were higher "
            "at 10k-20k steps on both seeds, but its seed 1 fell from 277 to 36 at the last evaluation, so its final mean "
            "is lower; two seeds at this stage separate nothing. With no measured "
            "winner, the default stays `action_bounding=\"clip\"`, the scheme of DeepMind's MPO: the policy's densities "
            "and KLs are those of a plain Gaussian, and the action penalty keeps the mean inside the box (its temperature "
            "is logged as `train/temperature_penalty`). `tanh` remains one keyword away "
            '(`policy_kwargs=dict(action_bounding="tanh")`). A longer MuJoCo comparison (HalfCheetah-v5 / Hopper-v5, '
            "≥ 300k steps, 3 seeds) belongs to the benchmark suite and should revisit this choice."
        ),
    ),
    "critic_targets": Report(
        title="Critic targets: Retrace vs n-step vs 1-step expected SARSA",
        page="critic_targets.md",
        intro=(
            "The same MPO (shipped Pendulum-v1 entry) with three policy-evaluation targets: 5-step expected-SARSA returns "
            "(the shipped setting; these are the MPO runs of docs/pendulum.md), 1-step expected SARSA (`n_steps=1`), and "
            'Retrace over segments of 8 steps with λ = 0.95 (`q_target="retrace", n_steps=1`; with Retrace, `batch_size` '
            "counts transitions, so each update sees 32 segments). Deterministic evaluation over 10 episodes every 2k "
            "steps. Runs added later (more seeds, HalfCheetah-v5 at 100k steps) appear here when the page is regenerated."
        ),
        sections={
            "Pendulum-v1, 20k steps": [
                Group("5-step", "pendulum", "mpo", "Pendulum-v1"),
                Group("1-step", "critic_pendulum_td1", "mpo", "Pendulum-v1"),
                Group("Retrace (L=8, λ=0.95)", "critic_pendulum_retrace", "mpo", "Pendulum-v1"),
            ],
        },
        reading=(
            "Three seeds of each target (5-step has five). All three end at the same level (about -145 at 20k steps: "
            "Retrace -144.1 ± 0.5, 1-step -146.2 ± 0.7, 5-step -145.7 ± 2.2 over seeds 0-2); they differ in how fast they"
            " get there. At 4k steps Retrace was ahead of both on seeds 0 and 1 (-725 and -365, against -1069 and -1067 "
            "for 5-step and -1037 and -934 for 1-step), but on seed 2 the 5-step target was ahead (-169, against -201 for"
            " Retrace and -676 for 1-step); by 6k steps 5-step and Retrace were level on seeds 1 and 2 and 5-step was "
            "ahead on seed 0 (-159 against -418). The first evaluation at or above -200 came at 6k, 6k and 4k steps for "
            "5-step, 8k, 6k and 6k for Retrace, and 10k, 6k and 6k for 1-step (seeds 0, 1, 2). Where Retrace loses here "
            "is wall-clock: each update also evaluates the target critic and policy at every step of the segments (31-43 "
            "env steps/s against 36-40 for 5-step, measured with two runs sharing the 2-core machine). On this easy task "
            "Retrace and 5-step returns are equivalent and reach -200 no later than 1-step on every seed; the default "
            "stays n-step until the HalfCheetah-v5 runs (suite `critic_targets`, about 10 CPU-hours) are in."
        ),
    ),
}


def load_results(folder: Path, problems: list[str]) -> list[dict[str, Any]]:
    """Read every result file of a folder; corrupted or incomplete files are reported in ``problems`` and skipped."""
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            result = json.loads(path.read_text())
            missing = {"algo", "env", "seed", "curve", "final_return"} - result.keys()
            if missing or not result["curve"]:
                raise ValueError(f"missing {sorted(missing) or 'curve points'}")
        except (OSError, ValueError) as error:
            problems.append(f"{path.relative_to(ROOT)}: skipped ({error})")
            continue
        results.append(result)
    return results


def runs_of(group: Group, problems: list[str]) -> list[dict[str, Any]]:
    runs = [r for r in load_results(RESULTS / group.tag, problems) if r["algo"] == group.algo and r["env"] == group.env]
    return sorted(runs, key=lambda r: r["seed"])


def _fmt(values: Iterable[float]) -> str:
    array = np.asarray(list(values), dtype=float)
    return f"{array.mean():.1f} ± {array.std():.1f}" if array.size else "n/a"


def section_markdown(name: str, groups: list[Group], problems: list[str], speed: bool, figure: str) -> list[str]:
    runs = {group.label: runs_of(group, problems) for group in groups}
    seeds = sorted({run["seed"] for group_runs in runs.values() for run in group_runs})
    lines = [f"## {name}", "", f"![learning curves]({figure})", ""]
    lines += ["Final evaluation return per seed:", ""]
    lines += ["| seed | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for seed in seeds:
        cells = []
        for group_runs in runs.values():
            match = [run for run in group_runs if run["seed"] == seed]
            cells.append(f"{match[0]['final_return']:.1f}" if match else "")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines.append("| mean ± std | " + " | ".join(_fmt(r["final_return"] for r in rs) for rs in runs.values()) + " |")
    minima = [f"{min(r['final_return'] for r in rs):.1f}" if rs else "" for rs in runs.values()]
    lines.append("| min | " + " | ".join(minima) + " |")
    lines.append("")
    if speed:
        lines += ["Speed (training only):", ""]
        reference = groups[-1].label
        lines += [f"| | env steps/s (median) | gradient steps/s (median) | wall-clock per env step / {reference}'s |"]
        lines += ["|---|---|---|---|"]
        per_step = {label: np.median([r["train_seconds"] / r["steps"] for r in rs]) for label, rs in runs.items() if rs}
        for label, rs in runs.items():
            if rs:
                env_speed = np.median([r["env_steps_per_second"] for r in rs])
                grad_speed = np.median([r["gradient_steps_per_second"] for r in rs])
                relative = per_step[label] / per_step[reference] if reference in per_step else float("nan")
                lines.append(f"| {label} | {env_speed:.1f} | {grad_speed:.1f} | {relative:.2f} |")
        lines.append("")
        ratios = [
            a["train_seconds"] / b["train_seconds"]
            for a in runs[groups[0].label]
            for b in runs[groups[1].label]
            if a["seed"] == b["seed"]
        ]
        if ratios:
            lines.append(
                f"Per seed, {groups[0].label}'s training wall-clock / {groups[1].label}'s: "
                + ", ".join(f"{ratio:.2f}" for ratio in ratios)
                + f" (median {np.median(ratios):.2f})."
            )
            lines.append("")
        lines += speed_markdown(groups[0].env, problems)
    return lines


def speed_markdown(env: str, problems: list[str]) -> list[str]:
    """The quiet, single-process speed measurements of ``speed.py`` for ``env``, one row per stored file."""
    lines = []
    for path in sorted((RESULTS / "speed").glob(f"{env}_*.json")):
        try:
            record = json.loads(path.read_text())
            medians = record["medians"]
        except (OSError, ValueError, KeyError) as error:
            problems.append(f"{path.relative_to(ROOT)}: skipped ({error})")
            continue
        cells = [record["commit"]]
        cells += [
            f"{medians[algo][key]:.1f}"
            for key in ("env_steps_per_second", "gradient_steps_per_second")
            for algo in ("mpo", "sac")
        ]
        cells.append(f"{record['mpo_over_sac_wall_clock_per_env_step']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return []
    header = [
        "Speed on a quiet machine (`python benchmarks/speed.py`: one process, one torch thread, MPO and SAC alternating,",
        "same 256-256 networks and batch 256; medians of 3 repeats):",
        "",
        "| commit | MPO env steps/s | SAC env steps/s | MPO grad steps/s | SAC grad steps/s | MPO / SAC time per env step |",
        "|---|---|---|---|---|---|",
    ]
    return [*header, *lines, ""]


def plot_section(groups: list[Group], problems: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for group in groups:
        runs = runs_of(group, problems)
        if not runs:
            continue
        length = min(len(run["curve"]) for run in runs)
        steps = np.array([point["step"] for point in runs[0]["curve"][:length]])
        returns = np.array([[point["mean"] for point in run["curve"][:length]] for run in runs])
        mean, std = returns.mean(axis=0), returns.std(axis=0)
        axis.plot(steps, mean, label=f"{group.label} ({len(runs)} seeds)")
        axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
    axis.set_xlabel("environment steps")
    axis.set_ylabel("mean evaluation return")
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def provenance(groups: Iterable[Group], problems: list[str]) -> list[str]:
    runs = [run for group in groups for run in runs_of(group, problems)]
    commits = sorted({run.get("commit", "unknown") for run in runs})
    machines = sorted({run.get("machine", "unknown") for run in runs})
    versions = sorted({json.dumps(run.get("versions", {}), sort_keys=True) for run in runs})
    lines = ["## Provenance", "", f"- runs: {len(runs)}; commits: {', '.join(commits)}", f"- machines: {'; '.join(machines)}"]
    lines += [f"- versions: {version}" for version in versions]
    hyperparams = {}
    for run in runs:
        source = run.get("hyperparams_source", "?")
        hyperparams.setdefault(f"{run['algo']} on {run['env']} (results/{run['tag']}; {source})", run.get("hyperparams"))
    lines += [f"- {key}: `{value}`" for key, value in hyperparams.items()]
    return [*lines, ""]


def write_report(name: str) -> list[str]:
    report = REPORTS[name]
    problems: list[str] = []
    lines = [f"# {report.title}", "", f"<!-- generated by benchmarks/report.py {name}; do not edit by hand -->", ""]
    lines += [report.intro, ""]
    all_groups = []
    for index, (section, groups) in enumerate(report.sections.items()):
        figure = f"figures/{name}_{index}.png"
        plot_section(groups, problems, DOCS / figure, section)
        lines += section_markdown(section, groups, problems, report.speed, figure)
        all_groups += groups
    if report.reading:
        lines += ["## Reading", "", report.reading, ""]
    lines += provenance(all_groups, problems)
    if problems:
        lines += ["## Skipped result files", "", *[f"- {problem}" for problem in problems], ""]
    (DOCS / report.page).write_text("\n".join(lines))
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="*", help=f"reports to write, among {sorted(REPORTS)} (default: all)")
    names = parser.parse_args().reports or list(REPORTS)
    unknown = set(names) - set(REPORTS)
    if unknown:
        parser.error(f"unknown report(s) {sorted(unknown)}: choose among {sorted(REPORTS)}")
    for name in names:
        problems = write_report(name)
        print(f"wrote docs/{REPORTS[name].page}", *problems, sep="\n  ", file=sys.stderr if problems else sys.stdout)


if __name__ == "__main__":
    main()
