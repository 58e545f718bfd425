"""
Kept final policies read each way: the final state of a run kept with ``run --keep-final`` evaluated again, without
training, with each way MPO's clipped Gaussian policy can act: its mode clip(mu) (``predict(deterministic=True)``,
what every benchmark evaluates), its mean E[clip(u)] (``deterministic_action="mean"``) and sampled actions.

    python -m benchmarks.final_policies run mujoco_screen --checkpoints /path/to/benchmarks/results/.checkpoints
    python -m benchmarks.final_policies page                                              # regenerate the page

Each reading runs the suite's number of evaluation episodes on the run's own evaluation environment (RL Zoo's, built as
the runner builds it from the settings the run trained with, ``VecNormalize`` statistics from the final state), seeded
with the run's evaluation seed before each reading, so that the three readings' episodes start from the same states.
The record also gives the run's own final evaluation (from its result file, where it trained with the same settings)
and, over the states the mode's episodes visited, how far mode and mean lie apart (the mean of |clip(mu) - E[clip(u)]|
over states and action dimensions), the share of the policy mean's components beyond the box and the policy's mean
standard deviation. Results: benchmarks/results/final_policies/<suite>/<env>/<run>.json; page:
docs/results/final_policies.md. A stored record is read again only when the final state or the episodes differ.
"""

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import mean_and_spread
from benchmarks.results import ResultError, load_result, write_result
from benchmarks.suite import RESULTS_DIR, Job, load_suite

RESULTS = RESULTS_DIR / "final_policies"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "results" / "final_policies.md"
#: The maintainers' reading of the stored records, placed on the page
READING = Path(__file__).with_name("final_policies.reading.md")
#: The ways a clipped Gaussian policy is read, in the order they are evaluated
READINGS = ("mode", "mean", "sampled")
#: What the page reads from a record: one written before any of them was measured is read again
RECORD_KEYS = ("readings", "run_final_return", "mode_mean_gap", "mean_outside_box", "policy_std", "trained_at", "commit")
#: Observations as a batch: an array, or a dict of arrays for ``Dict`` observation spaces
Observations = np.ndarray | dict[str, np.ndarray]


class UnreadableFinal(ValueError):
    """A kept final state that cannot be read each way (another action bounding, other settings, missing statistics)."""


def record_path(job: Job, store: Path) -> Path:
    """
    :param job: A run whose final state is kept
    :param store: The folder of this probe's records (:data:`RESULTS` in the checkout)
    :return: Where the readings of ``job``'s kept final state are stored
    """
    return store / job.suite / job.env_folder / f"{job.name}.json"


def kept_finals(jobs: list[Job], checkpoints: Path) -> list[Job]:
    """
    :param jobs: A suite's jobs
    :param checkpoints: The folder of checkpoints and kept final states
    :return: The MPO jobs whose final state is kept there, saved by the very same job (a final state saved under another
        job's signature, from before the suite was edited, is left out)
    """
    from benchmarks.checkpoints import read_state

    return [job for job in jobs if job.zoo_algo == "mpo" and read_state(job.final_path(checkpoints), job) is not None]


def is_current(record_file: Path, state: dict[str, Any], episodes: int) -> bool:
    """
    :param record_file: A stored record (:func:`record_path`)
    :param state: The kept final state's ``state.json``
    :param episodes: The episodes per reading asked for
    :return: Whether the record read this very final state with as many episodes, and holds every measure the page
        shows (:data:`RECORD_KEYS`); else it is read again
    """
    try:
        record = json.loads(record_file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        all(key in record for key in RECORD_KEYS)
        and record.get("episodes") == episodes
        and record.get("num_timesteps") == state.get("num_timesteps")
        and record.get("trained_at") == state.get("commit")
    )


def unreadable(model: Any) -> str | None:
    """
    :param model: A loaded model
    :return: Why its policy cannot be read each way (only a Gaussian actor clipping into the box has a mode and a mean
        that differ), or None
    """
    actor = getattr(model, "actor", None)
    bounding = getattr(actor, "action_bounding", None)
    if bounding != "clip":
        return f"its actor ({type(actor).__name__}, action_bounding={bounding!r}) does not clip a Gaussian into the box"
    return None


def policy_spread(model: Any, observations: Observations) -> dict[str, float]:
    """
    :param model: An MPO model with a clipped Gaussian actor
    :param observations: Observations as the policy sees them (after ``VecNormalize``), a batch
    :return: ``mode_mean_gap``: |clip(mu) - E[clip(u)]| (:func:`~sb3_mpo.mpo.losses.clipped_gaussian_mean`) averaged over
        states and action dimensions, in the normalised box's units; ``mean_outside_box``: the share of the Gaussian
        mean's components beyond [-1, 1]; ``policy_std``: the standard deviation's average over states and dimensions
    """
    import torch as th

    from sb3_mpo.mpo.losses import clipped_gaussian_mean

    model.policy.set_training_mode(False)
    with th.no_grad():
        mean, std = model.actor.distribution_params(model.policy.obs_to_tensor(observations)[0])
        gap = (mean.clamp(-1.0, 1.0) - clipped_gaussian_mean(mean, std)).abs()
    return {
        "mode_mean_gap": float(gap.mean()),
        "mean_outside_box": float((mean.abs() > 1.0).float().mean()),
        "policy_std": float(std.mean()),
    }


def stack_observations(observations: list[Any]) -> Observations:
    """:return: One observation per step (an array, or a dict of arrays) as a batch"""
    if isinstance(observations[0], dict):
        return {key: np.stack([observation[key] for observation in observations]) for key in observations[0]}
    return np.stack(observations)


def evaluate_reading(
    model: Any, env: Any, reading: str, episodes: int, seed: int, visited: list[Any] | None = None
) -> dict[str, Any]:
    """
    :param model: An MPO model with a clipped Gaussian actor
    :param env: Its evaluation environment (one env)
    :param reading: One of :data:`READINGS`
    :param episodes: Episodes to run
    :param seed: Seed of the environment's resets and of the sampled actions
    :param visited: Where to append the observation each action was chosen from, if given
    :return: The reading: its mean return, the episodes' returns and lengths
    """
    import torch as th

    from benchmarks.checkpoints import evaluate_with_action

    if reading not in READINGS:
        raise ValueError(f"reading={reading!r} is invalid, expected one of {READINGS}")

    def keep(local: dict[str, Any], _: dict[str, Any]) -> None:
        observations, index = local["observations"], local["i"]
        if isinstance(observations, dict):
            visited.append({key: np.array(value[index]) for key, value in observations.items()})  # type: ignore[union-attr]
        else:
            visited.append(np.array(observations[index]))  # type: ignore[union-attr]

    env.seed(seed)
    th.manual_seed(seed)
    action = "mean" if reading == "mean" else "mode"
    return evaluate_with_action(model, env, episodes, action, reading != "sampled", None if visited is None else keep)


def load_statistics(env: Any, folder: Path, name: str) -> None:
    """
    Give the evaluation environment's ``VecNormalize`` (under any wrapper rl_zoo3 puts above it) the statistics of the
    kept final state.

    :param env: The evaluation environment
    :param folder: The kept final state
    :param name: The run, for the error
    :raises UnreadableFinal: where the environment normalises and the final state has no statistics, or the reverse
    """
    from stable_baselines3.common.vec_env import VecNormalize, unwrap_vec_normalize

    from benchmarks.checkpoints import VEC_NORMALIZE_FILE

    normalizer, saved = unwrap_vec_normalize(env), folder / VEC_NORMALIZE_FILE
    if (normalizer is None) != (not saved.exists()):
        has = "has" if saved.exists() else "has no"
        does = "does not normalise" if normalizer is None else "normalises"
        raise UnreadableFinal(f"{name}: its evaluation environment {does} observations and its final state {has} {saved.name}")
    if normalizer is not None:
        statistics = VecNormalize.load(str(saved), normalizer.venv)
        normalizer.obs_rms, normalizer.ret_rms = statistics.obs_rms, statistics.ret_rms


def read_final(job: Job, checkpoints: Path, episodes: int | None = None, results_dir: Path = RESULTS_DIR) -> dict[str, Any]:
    """
    Evaluate ``job``'s kept final state each way (:data:`READINGS`).

    :param job: A job whose final state is kept (:func:`kept_finals`)
    :param checkpoints: The folder of checkpoints and kept final states
    :param episodes: Episodes per reading (None: the suite's evaluation episodes)
    :param results_dir: The result store where the run's own result file is looked for
    :return: The record to store
    :raises UnreadableFinal: where the final state cannot be read each way (:func:`unreadable`), was kept under other
        settings than the job's RL Zoo entry gives now, or its normalisation statistics do not fit its environment
    """
    from benchmarks.checkpoints import MODEL_FILE, read_state
    from benchmarks.stamp import stamp
    from benchmarks.zoo import zoo_experiment, zoo_settings
    from sb3_mpo import MPO

    episodes = job.eval_episodes if episodes is None else episodes
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    folder = job.final_path(checkpoints)
    settings = zoo_settings(job)
    state = read_state(folder, job, settings)
    if state is None:
        raise UnreadableFinal(f"{job.name}: no final state of this job in {folder} under the settings it trains with now")
    model = MPO.load(folder / MODEL_FILE, device="cpu")
    why = unreadable(model)
    if why is not None:
        raise UnreadableFinal(f"{job.name}: {why}")
    code = stamp()
    visited: list[Any] = []
    with tempfile.TemporaryDirectory() as log_folder, contextlib.ExitStack() as closing:
        manager, _ = zoo_experiment(job, log_folder)
        with contextlib.redirect_stdout(io.StringIO()):
            built, _ = manager.setup_experiment()  # type: ignore[misc]
            built.get_env().close()  # type: ignore[union-attr]  # the run's environment as rl_zoo3 builds it, unused
            env = manager.create_envs(n_envs=1, eval_env=True)
            closing.callback(env.close)
        load_statistics(env, folder, job.name)
        model.set_env(env)
        readings = {
            reading: evaluate_reading(model, env, reading, episodes, job.eval_seed, visited if reading == "mode" else None)
            for reading in READINGS
        }
    try:
        result = load_result(job.result_path(results_dir), job)
        run_final = float(result["final_return"]) if result["hyperparams"] == state.get("settings", settings) else None
    except ResultError:
        run_final = None
    return {
        "suite": job.suite,
        "algo": job.algo,
        "env": job.env,
        "seed": job.seed,
        "steps": job.steps,
        "num_timesteps": int(state["num_timesteps"]),
        "trained_at": state.get("commit"),
        "episodes": episodes,
        "eval_seed": job.eval_seed,
        "run_final_return": run_final,
        "readings": readings,
        **policy_spread(model, stack_observations(visited)),
        **code,
    }


def summary_line(records: list[dict[str, Any]]) -> str:
    """
    :param records: The stored records of one suite and environment
    :return: A sentence: how the mean reading and the sampled one compare with the mode over the runs (mean
        difference ± std over runs, and in how many runs the mean is at or above the mode)
    """

    def minus_mode(reading: str) -> np.ndarray:
        return np.array([record["readings"][reading]["mean"] - record["readings"]["mode"]["mean"] for record in records])

    mean, sampled = minus_mode("mean"), minus_mode("sampled")
    return (
        f"Mean minus mode over {len(records)} run{'s' * (len(records) != 1)}: {mean_and_spread(mean)} (at or above the "
        f"mode in {int(np.sum(mean >= 0))} of {len(records)}); sampled minus mode: {mean_and_spread(sampled)}."
    )


def write_page(store: Path, page: Path, reading: Path) -> str:
    """
    Regenerate the page from every stored record.

    :param store: The folder of this probe's records
    :param page: The page to write
    :param reading: The maintainers' reading placed on the page (if the file exists)
    :return: The page's text
    """
    records = [json.loads(path.read_text()) for path in sorted(store.glob("*/*/*.json"))]
    lines = [
        "# Kept final policies, read each way",
        "",
        "Generated by `python -m benchmarks.final_policies page` from `benchmarks/results/final_policies/`. Each run's",
        "final state, kept by `run --keep-final`, evaluated again without training on the run's evaluation environment,",
        "seeded as its evaluations are: with the clipped Gaussian's mode clip(μ) (what every page evaluates), its mean",
        'E[clip(u)] (`policy_kwargs` `deterministic_action="mean"`), and sampled actions; the same episodes\' starts for',
        "the three. 'run's final' is the run's own last evaluation (its environment had run earlier evaluations, so its",
        "episodes start elsewhere; — where its result is not stored or trained under other settings). Over the states of",
        "the mode's episodes: 'mode-mean gap' is |clip(μ) − E[clip(u)]| averaged over states and action dimensions (in the",
        "normalised box, whose half-width is 1), 'beyond the box' the share of the policy mean's components outside [-1, 1]",
        "(the mode acts on the box's faces there), σ the policy's mean standard deviation. 'trained at' is the commit of the",
        "run's last part, 'read at' that of the reading.",
        "",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["suite"], record["env"]), []).append(record)
    for (suite, env_id), group in sorted(groups.items()):
        lines += [
            f"## {suite}, {env_id}",
            "",
            "| algorithm | seed | steps | episodes | run's final | mode | mean | mean − mode | sampled | mode-mean gap "
            "| beyond the box | σ | trained at | read at |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for record in sorted(group, key=lambda item: (item["algo"], item["seed"])):
            shown = {name: round(record["readings"][name]["mean"]) for name in READINGS}
            run_final = "—" if record["run_final_return"] is None else f"{record['run_final_return']:.0f}"
            lines.append(
                f"| {record['algo']} | {record['seed']} | {record['num_timesteps']} | {record['episodes']} | {run_final} "
                f"| {shown['mode']} | {shown['mean']} | {shown['mean'] - shown['mode']:+d} | {shown['sampled']} "
                f"| {record['mode_mean_gap']:.3f} | {record['mean_outside_box']:.2f} | {record['policy_std']:.2f} "
                f"| {record['trained_at'] or '—'} | {record['commit']} |"
            )
        lines += ["", summary_line(group), ""]
    machines = sorted({record["machine"] for record in records})
    lines += [f"Machines: {'; '.join(machines)}." if machines else "No record is stored yet.", ""]
    if reading.is_file():
        lines += ["## Reading", "", reading.read_text().strip(), ""]
    text = "\n".join(lines)
    page.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="evaluate the kept final states not read yet, then write the page")
    run_parser.add_argument("suite", help="a suite YAML file, or the name of one in benchmarks/suites/")
    run_parser.add_argument("--checkpoints", type=Path, default=RESULTS_DIR / ".checkpoints", help="where the finals are")
    run_parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="the result store of the runs themselves")
    run_parser.add_argument("--envs", nargs="+", help="only these environments")
    run_parser.add_argument("--algos", nargs="+", help="only these algorithms")
    run_parser.add_argument("--episodes", type=int, help="episodes per reading (default: the suite's evaluation episodes)")
    commands.add_parser("page", help="regenerate the page only")
    args = parser.parse_args(argv)
    if args.command == "run":
        import torch as th

        from benchmarks.checkpoints import read_state

        if args.episodes is not None and args.episodes < 1:
            parser.error(f"--episodes must be a positive integer, got {args.episodes}")
        th.set_num_threads(1)
        jobs = [
            job
            for job in load_suite(args.suite).jobs
            if (args.envs is None or job.env in args.envs) and (args.algos is None or job.algo in args.algos)
        ]
        finals = kept_finals(jobs, args.checkpoints)
        if not finals:
            print(f"no kept final state of {args.suite}'s selected runs in {args.checkpoints}", file=sys.stderr)
        for job in finals:
            path = record_path(job, RESULTS)
            state = read_state(job.final_path(args.checkpoints), job) or {}
            if is_current(path, state, job.eval_episodes if args.episodes is None else args.episodes):
                continue
            try:
                record = read_final(job, args.checkpoints, args.episodes, args.results)
            except UnreadableFinal as error:
                print(f"skipped: {error}", file=sys.stderr)
                continue
            write_result(path, record)
            values = ", ".join(f"{name} {record['readings'][name]['mean']:.0f}" for name in READINGS)
            print(f"{job.name}: {values}", flush=True)
    print(write_page(RESULTS, PAGE, READING))


if __name__ == "__main__":
    main()
