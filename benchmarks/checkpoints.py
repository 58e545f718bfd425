"""
Mid-run checkpoints of a benchmark job, so that a run longer than a working session (a QR-DQN run on LunarLander, a
1M-step MuJoCo run) can be interrupted and resumed instead of started over.

Every few minutes of training, at the next boundary between a training phase and a rollout, :class:`RunCheckpoint`
writes the job's folder: the model (SB3's ``save``: networks, optimisers, MPO's multipliers, step counters), the
replay buffer (``save_replay_buffer``), the ``VecNormalize`` statistics and ``state.json`` (the evaluation curve so
far and the time spent). :func:`restore` puts a fresh run back in that state, its evaluation schedule included, so the
resumed run collects, trains and evaluates at the same steps as an uninterrupted one. The folder is replaced
atomically (written beside it, then renamed), so an interruption while saving leaves the previous checkpoint intact.

A resumed run is not bit-identical to an uninterrupted one: the environments restart with a fresh episode (the last
stored transition is ended as a time-limit truncation, so no return is bootstrapped across the gap) and the random
generators are not restored. Its result records where it was resumed (``resumes``), and the report says how many runs
were.
"""

import json
import shutil
import time
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from benchmarks.results import changed_settings, describe_changes
from benchmarks.suite import Job
from sb3_mpo.common.buffers import end_newest_episodes

STATE_FILE = "state.json"
MODEL_FILE = "model.zip"
BUFFER_FILE = "replay_buffer.pkl"
VEC_NORMALIZE_FILE = "vec_normalize.pkl"


def training_diagnostics(name_to_value: dict[str, Any]) -> dict[str, float]:
    """
    :param name_to_value: SB3's logger values since its last dump (``model.logger.name_to_value``)
    :return: The numbers the algorithm's ``train()`` logged (keys ``train/...``: for MPO its temperature, KL, policy
        std, Q-values and losses; for SAC its entropy coefficient and losses), as floats
    """
    return {
        key: float(value)
        for key, value in sorted(name_to_value.items())
        if key.startswith("train/") and isinstance(value, int | float) and not isinstance(value, bool)
    }


class TimedEvalCallback(EvalCallback):
    """
    SB3's EvalCallback that also measures the time spent evaluating, to exclude it from the training time, and keeps,
    with each evaluation, what training logged last (:func:`training_diagnostics`, taken before the evaluation dumps
    the logger; empty before the first update), so that a curve can be read beside its temperature, KL or critic.
    """

    eval_seconds = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.diagnostics: list[dict[str, float]] = []  # one per evaluation, as SB3's evaluations_* lists

    def _on_step(self) -> bool:
        start = time.perf_counter()
        evaluations = len(self.evaluations_timesteps)
        logged = dict(self.model.logger.name_to_value)  # an evaluation dumps (and so clears) the logger
        keep_going = super()._on_step()
        if len(self.evaluations_timesteps) > evaluations:
            self.diagnostics.append(training_diagnostics(logged))
        self.eval_seconds += time.perf_counter() - start
        return keep_going

    @property
    def curve_state(self) -> dict[str, list]:
        """The evaluations so far, as JSON-ready lists."""
        return {
            "timesteps": [int(step) for step in self.evaluations_timesteps],
            "results": [list(map(float, returns)) for returns in self.evaluations_results],
            "lengths": [list(map(int, lengths)) for lengths in self.evaluations_length],
            "diagnostics": [dict(values) for values in self.diagnostics],
        }

    def restore_curve(self, curve: dict[str, list], eval_seconds: float, n_calls: int) -> None:
        """
        :param curve: The evaluations so far (:attr:`curve_state`; a checkpoint written before diagnostics were kept
            restores empty ones)
        :param eval_seconds: The time they took
        :param n_calls: The steps of the vectorised environment so far, which schedule the next evaluation
        """
        self.n_calls = n_calls
        self.evaluations_timesteps = list(curve["timesteps"])
        self.evaluations_results = [list(returns) for returns in curve["results"]]
        self.evaluations_length = [list(lengths) for lengths in curve["lengths"]]
        self.diagnostics = [dict(values) for values in curve.get("diagnostics", [{} for _ in curve["timesteps"]])]
        self.eval_seconds = eval_seconds


def job_signature(job: Job) -> dict[str, Any]:
    """Everything that defines a job's training, as JSON: a checkpoint only resumes the job that wrote it."""
    return {
        "suite": job.suite,
        "algo": job.zoo_algo,
        "env": job.env,
        "seed": job.seed,
        "steps": job.steps,
        "eval_freq": job.eval_freq,
        "eval_episodes": job.eval_episodes,
        "hyperparams": {key: repr(value) for key, value in sorted(job.hyperparams.items())},
        "zoo_entry": job.zoo_entry,
    }


class RunCheckpoint(BaseCallback):
    """
    Save the run into its checkpoint folder once ``interval_seconds`` of wall-clock have passed since the run (or its
    last save) started, at the start of the next rollout: the previous training phase is done and no step of the new
    rollout is taken, so a resumed run keeps the schedule of collection and updates (0 saves at every rollout).

    :param folder: The job's checkpoint folder (replaced at each save)
    :param job: The job, whose signature is stored
    :param evaluation: The run's evaluation callback, whose curve and timings are stored
    :param interval_seconds: Minimum wall-clock between two saves
    :param state: The restored state of a resumed run (its timings and resumes carry on), or None
    :param settings: The settings the run trains with (its RL Zoo entry after the suite's overrides, in the stored
        form), kept so that the checkpoint resumes only under the same ones
    """

    def __init__(
        self,
        folder: Path,
        job: Job,
        evaluation: TimedEvalCallback,
        interval_seconds: float,
        state: dict[str, Any] | None,
        settings: dict[str, str],
    ):
        super().__init__()
        self.folder, self.job, self.evaluation, self.interval_seconds = folder, job, evaluation, interval_seconds
        self.settings = settings
        self.previous_seconds = state["elapsed_seconds"] if state else 0.0
        self.resumes: list[dict[str, Any]] = list(state["resumes"]) if state else []
        self.save_seconds = state["save_seconds"] if state else 0.0
        self.saved_step = state["num_timesteps"] if state else 0
        self.start = self.last_save = time.perf_counter()

    def _on_training_start(self) -> None:
        self.start = self.last_save = time.perf_counter()

    @property
    def elapsed_seconds(self) -> float:
        """Wall-clock of ``learn`` over every part of the run so far, saves included."""
        return self.previous_seconds + time.perf_counter() - self.start

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        step = self.model.num_timesteps
        if self.saved_step < step < self.job.steps and time.perf_counter() - self.last_save >= self.interval_seconds:
            self.save()

    def save(self) -> None:
        start = time.perf_counter()
        model = self.model
        partial = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        model.save(partial / MODEL_FILE)
        if isinstance(model, OffPolicyAlgorithm):
            model.save_replay_buffer(partial / BUFFER_FILE)
        vec_normalize = model.get_vec_normalize_env()
        if vec_normalize is not None:
            vec_normalize.save(str(partial / VEC_NORMALIZE_FILE))
        self.save_seconds += time.perf_counter() - start
        state = {
            "job": job_signature(self.job),
            "settings": self.settings,
            "num_timesteps": int(model.num_timesteps),
            "curve": self.evaluation.curve_state,
            "elapsed_seconds": self.elapsed_seconds,
            "eval_seconds": self.evaluation.eval_seconds,
            "save_seconds": self.save_seconds,
            "resumes": self.resumes,
        }
        (partial / STATE_FILE).write_text(json.dumps(state, indent=1))
        # Swap the folders: a crash before the rename keeps the old checkpoint, one after it the new one
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        partial.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)
        self.saved_step = int(model.num_timesteps)
        self.last_save = time.perf_counter()


def _read_state_file(folder: Path) -> dict[str, Any] | None:
    """:return: The parsed ``state.json`` of ``folder``, or None when there is none (or it is unreadable)"""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def read_state(folder: Path, job: Job, settings: dict[str, str] | None = None) -> dict[str, Any] | None:
    """
    :param folder: The job's checkpoint folder
    :param job: The job about to train
    :param settings: The settings it trains with now (stored form); None: not compared
    :return: The checkpoint's state when ``folder`` holds a complete checkpoint of this very job, saved under the same
        settings (a checkpoint from before settings were kept is taken on its job alone), else None
    """
    state = _read_state_file(folder)
    if state is None or state.get("job") != job_signature(job):
        return None
    return state if settings is None or state.get("settings", settings) == settings else None


def stale_checkpoint(folder: Path, settings: dict[str, str]) -> str | None:
    """
    :param folder: A job's checkpoint folder
    :param settings: The settings its run trains with now (stored form)
    :return: What differs, when ``folder`` holds a checkpoint saved under other settings (an RL Zoo entry or suite
        override edited since; compared exactly, as the checkpoint's model keeps its own), else None
    """
    saved = (_read_state_file(folder) or {}).get("settings")
    if saved is None or saved == settings:
        return None
    return describe_changes(changed_settings(saved, settings, {}), "the checkpoint's code")


def saved_step(folder: Path) -> int | None:
    """:return: The step the checkpoint in ``folder`` reached, or None when there is none (or it is unreadable)"""
    step = (_read_state_file(folder) or {}).get("num_timesteps")
    return step if isinstance(step, int) else None


def restore(model: BaseAlgorithm, folder: Path, state: dict[str, Any], evaluation: TimedEvalCallback) -> BaseAlgorithm:
    """
    Resume a run from its checkpoint: load the saved model into the freshly built run's environment, with its replay
    buffer and ``VecNormalize`` statistics, and give the evaluation callback the curve so far.

    :param model: The model rl_zoo3 just built for the job (its environment is reused)
    :param folder: The checkpoint folder
    :param state: Its state (:func:`read_state`)
    :param evaluation: The run's evaluation callback
    :return: The loaded model, ready for ``learn(..., reset_num_timesteps=False)``
    """
    env = model.get_env()
    loaded = type(model).load(folder / MODEL_FILE, env=env, device=model.device)
    # The saved last observation belongs to the interrupted episode: the new run must reset its environments
    loaded._last_obs = None  # type: ignore[assignment]
    if isinstance(loaded, OffPolicyAlgorithm):
        loaded.load_replay_buffer(folder / BUFFER_FILE)
        assert loaded.replay_buffer is not None
        end_newest_episodes(loaded.replay_buffer)
    vec_normalize = loaded.get_vec_normalize_env()
    if vec_normalize is not None:
        saved = VecNormalize.load(str(folder / VEC_NORMALIZE_FILE), vec_normalize.venv)
        vec_normalize.obs_rms, vec_normalize.ret_rms = saved.obs_rms, saved.ret_rms
    evaluation.restore_curve(state["curve"], state["eval_seconds"], n_calls=loaded.num_timesteps // loaded.n_envs)
    return loaded
