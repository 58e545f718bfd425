"""rl_zoo3's side of a benchmark run: which tuned entry a job trains with, and the experiment manager that builds it."""

import argparse
import contextlib
import io
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.results import class_defaults, stored_form
from benchmarks.suite import Job

if TYPE_CHECKING:
    from sb3_mpo.zoo.exp_manager import MPOExperimentManager


def zoo_hyperparams_file(algo: str) -> Path:
    """The RL Zoo hyperparameter file of an algorithm: sb3-mpo's for MPO, rl_zoo3's tuned file otherwise."""
    if algo == "mpo":
        from sb3_mpo.common.hyperparams import HYPERPARAMS_PATH

        return HYPERPARAMS_PATH
    import rl_zoo3

    return Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo}.yml"


def zoo_config(job: Job, folder: Path) -> tuple[str | None, str]:
    """
    The hyperparameter file rl_zoo3 should read for a job, and a description of where the settings come from.
    When the algorithm's file has no entry for the environment and the suite names a ``zoo_entry`` (e.g. the tuned
    Hopper-v4 entry for Hopper-v5), that entry is written to a file of its own under the environment's id.

    :return: The file to pass as rl_zoo3's ``config`` (None: the algorithm's own file), and the description
    """
    import yaml

    source = zoo_hyperparams_file(job.zoo_algo)
    label = f"{source.parent.parent.name}/{source.parent.name}/{source.name}"
    if job.zoo_entry is None:
        return None, label
    with open(source) as file:
        entries = yaml.safe_load(file)
    if job.env in entries:
        return None, label
    if job.zoo_entry not in entries:
        raise ValueError(f"{label} has no entry for {job.env} nor for zoo_entry={job.zoo_entry!r}")
    config = folder / f"{job.zoo_algo}_{job.env}.yml"
    config.write_text(yaml.safe_dump({job.env: entries[job.zoo_entry]}))
    return str(config), f"{label}, entry {job.zoo_entry}"


def zoo_experiment(job: Job, log_folder: str) -> tuple["MPOExperimentManager", str]:
    """
    rl_zoo3's experiment manager (with MPO registered) for a job: RL Zoo's wrappers, ``n_envs``, normalisation and
    settings, with the suite's overrides; its own evaluation is off (the runner evaluates).

    :param job: The run
    :param log_folder: Where rl_zoo3 may write (a temporary folder)
    :return: The manager, whose ``setup_experiment()`` builds the model, and where the settings come from
    """
    from sb3_mpo.zoo.exp_manager import MPOExperimentManager
    from sb3_mpo.zoo.registration import register

    register()
    config, hyperparams_source = zoo_config(job, Path(log_folder))
    args = argparse.Namespace(algo=job.zoo_algo, env=job.env, seed=job.seed, n_timesteps=job.steps, suite=job.suite)
    manager = MPOExperimentManager(
        args,
        job.zoo_algo,
        job.env,
        log_folder,
        n_timesteps=job.steps,
        eval_freq=-1,  # the runner evaluates instead
        hyperparams=job.hyperparams,
        seed=job.seed,
        verbose=0,
        device="cpu",
        config=config,
    )
    return manager, hyperparams_source


def zoo_settings(job: Job) -> dict[str, str]:
    """
    The settings ``job`` would train with now: its RL Zoo entry after the suite's overrides, as rl_zoo3 resolves them
    for training, in the form result files store them (:func:`benchmarks.results.stored_form`). Builds no model.

    :param job: The run
    :return: Its settings
    :raises ValueError: where rl_zoo3 finds no entry for it
    """
    with tempfile.TemporaryDirectory() as log_folder:
        manager, _ = zoo_experiment(job, log_folder)
        with contextlib.redirect_stdout(io.StringIO()):  # rl_zoo3 prints the settings it reads
            _, saved_hyperparams = manager.read_hyperparameters()
    return stored_form(saved_hyperparams)


def algorithm_defaults(algo: str) -> dict[str, str]:
    """
    :param algo: An algorithm of rl_zoo3's registry (MPO included)
    :return: The keyword defaults of its class, in the stored form
    """
    from rl_zoo3.utils import ALGOS

    from sb3_mpo.zoo.registration import register

    register()
    return class_defaults(ALGOS[algo])
