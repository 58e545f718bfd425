"""
Mid-run checkpoints of a benchmark job, so that a run longer than a working session (a QR-DQN run on LunarLander, a
1M-step MuJoCo run) can be interrupted and resumed instead of started over.

Every few minutes of training, at the next boundary between a training phase and a rollout, :class:`RunCheckpoint`
writes the job's folder: the model (SB3's ``save``: networks, optimisers, MPO's multipliers, step counters), the
replay buffer (``save_replay_buffer``), the ``VecNormalize`` statistics and ``state.json`` (the evaluation curve so
far and the time spent). :func:`restore` puts a fresh run back in that state, its evaluation schedule included, so the
resumed run collects, trains and evaluates at the same steps as an uninterrupted one. The folder is replaced
by renames (written beside it, the old one moved aside, the new one moved in), so an interruption while saving leaves
the previous checkpoint intact: between the two renames as ``<folder>.old`` beside the complete new one
(``<folder>.partial``), which the next run or ``status`` puts in place (:func:`recover_interrupted_save`).

A resumed run is not bit-identical to an uninterrupted one: the environments restart with a fresh episode (the last
stored transition is ended as a time-limit truncation, so no return is bootstrapped across the gap) and the random
generators restart from the run's seed instead of carrying on (SB3's ``load`` re-seeds them, and the environments are
seeded again): exploration noise and minibatches draw what they drew at step 0, and the evaluation episodes start as
the first evaluation's did. Its result records where it was resumed (``resumes``), and the report says how many runs
were.

A finished run can keep its final state in the same form (``run --keep-final``, :meth:`Job.final_path`), and a longer
run of the same training (algorithm, settings, seed, evaluation) in another suite can start from it instead of from
step 0 (``run --continue-from``, :func:`continue_from_final`): a 300k-step run picks up a 100k-step run's model, replay
buffer and curve. That is the same training as a fresh longer run where nothing depends on the budget: the algorithms
of :data:`CONTINUABLE_ALGOS`, under settings without a schedule (RL Zoo's ``lin_`` values follow the progress through
the budget). Its result says which run it continued (``continued_from``), and the report says how many runs did.

Where another suite has already finished the very same run (the same training and budget, settings unchanged since), a
suite adopts its result instead of training it again (``run --adopt-from``, :func:`adopt_result`): the file is copied
with its numbers unchanged and names the run it came from (``adopted_from``).
"""

import contextlib
import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, sync_envs_normalization

from benchmarks.results import TRAINING_RETURN, ResultError, changed_settings, describe_changes, load_result, write_result
from benchmarks.suite import PAIRED_EVALUATIONS, Job
from sb3_mpo.common.buffers import end_newest_episodes
from sb3_mpo.common.hyperparams import SCHEDULED_RATES

STATE_FILE = "state.json"
MODEL_FILE = "model.zip"
BUFFER_FILE = "replay_buffer.pkl"
VEC_NORMALIZE_FILE = "vec_normalize.pkl"
#: Algorithms whose training does not depend on its budget under constant settings: off-policy learners whose updates
#: read no progress through ``total_timesteps`` (DQN's and QR-DQN's exploration schedule does, as do on-policy ones')
CONTINUABLE_ALGOS = ("mpo", "sac", "td3", "tqc", "ddpg", "crossq")
#: The settings that rl_zoo3 turns into a linear schedule over the budget when they are strings (``"lin_1e-3"``), and
#: the learning rates that sb3-mpo reads the same way (MPO's actor's own)
SCHEDULED_SETTINGS = tuple(dict.fromkeys(("learning_rate", "clip_range", "clip_range_vf", "delta_std", *SCHEDULED_RATES)))


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


class DivergedError(RuntimeError):
    """A run's networks hold a NaN or an infinity: it is stopped, and no checkpoint keeps that state."""


def non_finite_tensors(model: BaseAlgorithm) -> list[str]:
    """
    :param model: A model of any SB3 algorithm
    :return: The names of its policy's tensors (parameters and buffers: running statistics included) that hold a NaN or
        an infinity, in ``state_dict`` order
    """
    return [
        name
        for name, tensor in model.policy.state_dict().items()
        if tensor.is_floating_point() and not bool(tensor.isfinite().all())
    ]


def check_finite(model: BaseAlgorithm, when: str) -> None:
    """
    Stop a run whose networks diverged. SB3's algorithms (CrossQ, SAC, ...) go on training on NaN where MPO raises
    :class:`~sb3_mpo.NonFiniteError`: their curve would go on with the returns of a broken policy.

    :param model: The run's model
    :param when: What was about to happen (``"after its evaluation"``, ``"before saving its checkpoint"``)
    :raise DivergedError: Naming the first non-finite tensors and the step
    """
    broken = non_finite_tensors(model)
    if broken:
        shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
        raise DivergedError(
            f"{type(model).__name__} diverged: at step {model.num_timesteps} ({when}) its policy holds NaN or infinite "
            f"values in {shown}. The run stops; its checkpoint, if any, is the last one saved before."
        )


class WarningRecord:
    """
    The warnings a run gives (MPO's health checks, a library's), so that its result says what it reported and not only
    its log: each distinct one (category and text) once, with the env step where it was first shown.

    :param step: A function that returns the run's env step at the moment it is called
    """

    def __init__(self, step: Callable[[], int]) -> None:
        self.step = step
        self.warnings: list[dict[str, Any]] = []

    def keep(self, category: str, message: str, step: int) -> None:
        """
        Keep a warning unless one of the same category and text is kept already (the first one shown stays).

        :param category: The warning's class name
        :param message: Its text
        :param step: The env step where it was shown
        """
        if not any(kept["category"] == category and kept["message"] == message for kept in self.warnings):
            self.warnings.append({"step": step, "category": category, "message": message})

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """
        Keep each distinct warning that is shown inside; it is still shown as before. The process's filters decide what
        is shown, as outside (what they ignore is not kept, what they turn into errors raises); the warnings module
        counts each location's warnings afresh here.
        """
        with warnings.catch_warnings():
            show = warnings.showwarning

            def record(
                message: Warning | str,
                category: type[Warning],
                filename: str,
                lineno: int,
                file: TextIO | None = None,
                line: str | None = None,
            ) -> None:
                self.keep(category.__name__, str(message), int(self.step()))
                show(message, category, filename, lineno, file, line)

            warnings.showwarning = record
            yield


class TimedEvalCallback(EvalCallback):
    """
    SB3's EvalCallback that also measures the time spent evaluating, to exclude it from the training time, and keeps,
    with each evaluation, what training logged last (:func:`training_diagnostics`, taken before the evaluation dumps
    the logger; empty before the first update), so that a curve can be read beside its temperature, KL or critic, and
    the mean return of the training episodes that ended since the previous evaluation (:data:`TRAINING_RETURN`: the
    behaviour policy, its exploration included, where the evaluation runs the deterministic one). Its
    :attr:`warning_record` keeps the warnings that training gives (MPO's health checks, a library's), at the model's env
    step, so that a result says what its run reported and not only the log. With ``paired`` it evaluates the same
    policy a second way after each evaluation (:class:`PairedEvaluation`), kept by evaluation in :attr:`paired_results`.

    :param paired: The second evaluation (None: only the one)
    """

    eval_seconds = 0.0

    def __init__(self, *args: Any, paired: "PairedEvaluation | None" = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paired = paired
        self.paired_results: dict[int, dict[str, Any]] = {}  # evaluation's index -> the paired evaluation's returns
        self.diagnostics: list[dict[str, float]] = []  # one per evaluation, as SB3's evaluations_* lists
        self.training_returns: list[float] = []  # of the training episodes that ended since the last evaluation
        self._counted_step = -1  # the training step whose ended episodes are counted (the final evaluation repeats one)
        self.warning_record = WarningRecord(self._env_step)

    def _env_step(self) -> int:
        model = getattr(self, "model", None)  # set once learn() has set up the callbacks
        return self.num_timesteps if model is None else model.num_timesteps

    def _on_step(self) -> bool:
        start = time.perf_counter()
        evaluations = len(self.evaluations_timesteps)
        logged = dict(self.model.logger.name_to_value)  # an evaluation dumps (and so clears) the logger
        if self.model.num_timesteps != self._counted_step:
            self._counted_step = self.model.num_timesteps
            # Monitor's summary of each training episode that this step ended
            self.training_returns += [
                float(info["episode"]["r"]) for info in self.locals.get("infos", ()) if "episode" in info
            ]
        keep_going = super()._on_step()
        if len(self.evaluations_timesteps) > evaluations:
            check_finite(self.model, "after its evaluation")
            diagnostics = training_diagnostics(logged)
            if self.training_returns:
                diagnostics[TRAINING_RETURN] = float(np.mean(self.training_returns))
            self.diagnostics.append(diagnostics)
            self.training_returns = []
            if self.paired is not None:
                self.paired_results[evaluations] = self.paired.evaluate(self.model, self.n_eval_episodes)
        self.eval_seconds += time.perf_counter() - start
        return keep_going

    @property
    def curve_state(self) -> dict[str, Any]:
        """The evaluations so far, as JSON-ready lists (and the paired evaluations by the evaluation's index)."""
        return {
            "timesteps": [int(step) for step in self.evaluations_timesteps],
            "results": [list(map(float, returns)) for returns in self.evaluations_results],
            "lengths": [list(map(int, lengths)) for lengths in self.evaluations_length],
            "diagnostics": [dict(values) for values in self.diagnostics],
            "training_returns": list(self.training_returns),
            "warnings": [dict(entry) for entry in self.warning_record.warnings],
            "paired": {str(index): dict(result) for index, result in self.paired_results.items()},
        }

    def result_curve(self) -> list[dict[str, Any]]:
        """
        :return: The evaluations so far as a result's curve: per evaluation its step, the mean, standard deviation and
            list of the episodes' returns, their lengths (where an episode ended early: a fall, not a slow gait), what
            training logged last before it (``train``), and where the run evaluated it a second way, that evaluation
            under the name of :class:`PairedEvaluation` (``mean_action``)
        """
        curve = [
            {
                "step": int(step),
                "mean": float(np.mean(returns)),
                "std": float(np.std(returns)),
                "returns": list(map(float, returns)),
                "lengths": list(map(int, lengths)),
                "train": diagnostics,
            }
            for step, returns, lengths, diagnostics in zip(
                self.evaluations_timesteps, self.evaluations_results, self.evaluations_length, self.diagnostics, strict=True
            )
        ]
        for index, result in self.paired_results.items():
            curve[index][result["name"]] = result
        return curve

    def evaluate_final(self, steps: int) -> None:
        """
        Evaluate the policy at the end of a run of ``steps`` steps unless the schedule just did (a budget that is not a
        multiple of the evaluation frequency, or of the rollout, ends between two evaluations).
        """
        if self.evaluations_timesteps and self.evaluations_timesteps[-1] >= steps:
            return
        self.n_calls, self.eval_freq = 0, 1
        self.num_timesteps = self.model.num_timesteps
        self.on_step()

    def restore_curve(self, curve: dict[str, Any], eval_seconds: float, n_calls: int) -> None:
        """
        :param curve: The evaluations so far and the warnings given (:attr:`curve_state`; a checkpoint written before
            diagnostics, training returns, warnings or paired evaluations were kept restores empty ones)
        :param eval_seconds: The time they took
        :param n_calls: The steps of the vectorised environment so far, which schedule the next evaluation
        """
        self.n_calls = n_calls
        self.evaluations_timesteps = list(curve["timesteps"])
        self.evaluations_results = [list(returns) for returns in curve["results"]]
        self.evaluations_length = [list(lengths) for lengths in curve["lengths"]]
        self.diagnostics = [dict(values) for values in curve.get("diagnostics", [{} for _ in curve["timesteps"]])]
        self.training_returns = list(curve.get("training_returns", []))
        self.warning_record.warnings = [dict(entry) for entry in curve.get("warnings", [])]
        self.paired_results = {int(index): dict(result) for index, result in curve.get("paired", {}).items()}
        self.eval_seconds = eval_seconds


class PairedEvaluation:
    """
    A second evaluation of the policy that the run's evaluation has just scored, on an environment of its own seeded
    like the first (so that its episodes start from the same states), with MPO's deterministic action taken as the
    clipped Gaussian's mean instead of its mode: the same policy, read another way, at every evaluation of the run.
    Training never sees it.

    :param env: Its evaluation environment (seeded by the caller like the run's)
    :param name: Which second evaluation, one of :data:`PAIRED_EVALUATIONS`
    """

    def __init__(self, env: VecEnv, name: str = "mean_action") -> None:
        if name not in PAIRED_EVALUATIONS:
            raise ValueError(f"paired_evaluation={name!r} is invalid, expected one of {PAIRED_EVALUATIONS}")
        self.env, self.name = env, name

    @staticmethod
    def applies_to(model: BaseAlgorithm) -> bool:
        """:return: Whether the model has a second way to read its policy: MPO's Gaussian actor with clipped actions"""
        actor = getattr(model, "actor", None)
        return getattr(actor, "action_bounding", None) == "clip" and getattr(actor, "deterministic_action", None) == "mode"

    def evaluate(self, model: BaseAlgorithm, episodes: int) -> dict[str, Any]:
        """
        :param model: The model just evaluated (its actor is switched to the mean action for this evaluation only)
        :param episodes: Deterministic episodes, as many as the run's evaluation
        :return: The evaluation's name, mean return, the episodes' returns and lengths
        """
        if not self.applies_to(model):
            raise ValueError(f"{self.name}: {type(model).__name__} has no clipped Gaussian actor reading its mode")
        if model.get_vec_normalize_env() is not None:
            sync_envs_normalization(model.get_env(), self.env)  # type: ignore[arg-type]
        return {"name": self.name, **evaluate_with_action(model, self.env, episodes, "mean")}


def evaluate_with_action(
    model: BaseAlgorithm,
    env: VecEnv,
    episodes: int,
    deterministic_action: str,
    deterministic: bool = True,
    callback: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """
    SB3's ``evaluate_policy`` with MPO's actor reading its deterministic action as ``deterministic_action`` for these
    episodes only (the actor's own is restored after, whatever happens).

    :param model: An MPO model with a Gaussian actor
    :param env: The evaluation environment
    :param episodes: Episodes to run
    :param deterministic_action: ``"mode"`` or ``"mean"`` (:class:`~sb3_mpo.mpo.policies.GaussianActor`)
    :param deterministic: Whether the policy acts deterministically (False: sampled actions, where the first is unused)
    :param callback: ``evaluate_policy``'s callback, called after each step
    :return: The mean return, the episodes' returns and lengths
    """
    actor = model.actor  # type: ignore[attr-defined]
    previous, actor.deterministic_action = actor.deterministic_action, deterministic_action
    try:
        returns, lengths = evaluate_policy(
            model, env, episodes, deterministic=deterministic, return_episode_rewards=True, callback=callback
        )
    finally:
        actor.deterministic_action = previous
    return {
        "mean": float(np.mean(returns)),
        "returns": [float(value) for value in returns],  # type: ignore[union-attr]
        "lengths": [int(value) for value in lengths],  # type: ignore[union-attr]
    }


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
    :param leg: What to store about the code and machine of the part of the run that saves (its ``commit`` and
        ``torch_threads``), which a longer run that continues this one records
    """

    def __init__(
        self,
        folder: Path,
        job: Job,
        evaluation: TimedEvalCallback,
        interval_seconds: float,
        state: dict[str, Any] | None,
        settings: dict[str, str],
        leg: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.folder, self.job, self.evaluation, self.interval_seconds = folder, job, evaluation, interval_seconds
        self.settings, self.leg = settings, leg or {}
        # The shorter run this one continues (see continue_from_final), kept through every save
        self.continued_from = state.get("continued_from") if state else None
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

    def save(self, final: bool = False) -> None:
        """
        Save the run so far (model, replay buffer, normalisation, curve, timings) into the checkpoint folder, swapped in
        whole.

        :param final: The finished run's state, saved for a longer run to continue (``run --keep-final``): marked as
            such, and its save left out of the timings it stores, as the result leaves it out
        """
        start = time.perf_counter()
        elapsed = self.elapsed_seconds  # a final save's own time is in none of the timings it stores
        model = self.model
        check_finite(model, "before saving its checkpoint")
        partial = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        model.save(partial / MODEL_FILE)
        if isinstance(model, OffPolicyAlgorithm):
            model.save_replay_buffer(partial / BUFFER_FILE)
        vec_normalize = model.get_vec_normalize_env()
        if vec_normalize is not None:
            vec_normalize.save(str(partial / VEC_NORMALIZE_FILE))
        if not final:
            self.save_seconds += time.perf_counter() - start
        state = {
            "job": job_signature(self.job),
            "settings": self.settings,
            "num_timesteps": int(model.num_timesteps),
            "curve": self.evaluation.curve_state,
            "elapsed_seconds": elapsed if final else self.elapsed_seconds,
            "eval_seconds": self.evaluation.eval_seconds,
            "save_seconds": self.save_seconds,
            "resumes": self.resumes,
            **self.leg,
            **({"continued_from": self.continued_from} if self.continued_from else {}),
            **({"final": True} if final else {}),
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


def recover_interrupted_save(folder: Path) -> None:
    """
    Undo a save interrupted between its two renames (:meth:`RunCheckpoint.save`), or a continuation's between its
    removal of a stale checkpoint and its rename (:func:`continue_from_final`): where the job has no checkpoint folder,
    the one written beside it (``<folder>.partial``) becomes it if it is complete (its ``state.json``, written last, is
    there), else the previous one (``<folder>.old``).

    :param folder: A job's checkpoint folder
    """
    if folder.exists():
        return
    partial, old = folder.with_name(folder.name + ".partial"), folder.with_name(folder.name + ".old")
    if _read_state_file(partial) is not None:
        partial.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    elif old.is_dir():
        old.rename(folder)


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


class StaleCheckpoint(NamedTuple):
    """Why a job's checkpoint will not be resumed, though it is there."""

    #: How it was saved: ``"under other settings"`` or ``"for another set-up of the run"``
    how: str
    #: What differs, ``key: before -> now`` for each difference
    changes: str


def stale_checkpoint(folder: Path, job: Job, settings: dict[str, str] | None) -> StaleCheckpoint | None:
    """
    :param folder: A job's checkpoint folder
    :param job: The job as its suite gives it now
    :param settings: The settings its run trains with now (stored form); None: not compared
    :return: What differs, when ``folder`` holds a checkpoint that :func:`read_state` refuses: one saved for another
        set-up of the job (its evaluation, suite override or RL Zoo entry as the suite gave them then), or under other
        settings (an RL Zoo entry or suite override edited since; compared exactly, as the checkpoint's model keeps its
        own), or one whose ``state.json`` is missing, unreadable or names no run; else None
    """
    state = _read_state_file(folder) or {}
    saved_job, signature = state.get("job"), job_signature(job)
    if folder.is_dir() and not isinstance(saved_job, dict):
        return StaleCheckpoint(
            "without a state.json that names its run",
            "a save that died before writing it, or a runner from before checkpoints named their run",
        )
    if isinstance(saved_job, dict) and saved_job != signature:

        def shown(value: Any) -> str | None:
            return None if value is None else str(value)

        keys = sorted(set(saved_job) | set(signature), key=str)
        changes = {
            str(key): (shown(saved_job.get(key)), shown(signature.get(key)))
            for key in keys
            if saved_job.get(key) != signature.get(key)
        }
        return StaleCheckpoint("for another set-up of the run", describe_changes(changes, "the checkpoint's code"))
    saved = state.get("settings")
    if settings is None or saved is None or saved == settings:
        return None
    return StaleCheckpoint(
        "under other settings", describe_changes(changed_settings(saved, settings, {}), "the checkpoint's code")
    )


class CheckpointProgress(NamedTuple):
    """How far a checkpoint's run got."""

    #: The step it reached
    step: int
    #: The step and mean return of its newest evaluation, or None when it holds none
    last_evaluation: tuple[int, float] | None
    #: Its pace so far, env steps per second of training (evaluations and saves left out, as a result's
    #: ``env_steps_per_second``), or None where the checkpoint does not say
    steps_per_second: float | None = None


def training_pace(state: dict[str, Any]) -> float | None:
    """
    :param state: A checkpoint's state (or a result's fields of the same names)
    :return: ``num_timesteps`` over the wall-clock of ``learn`` so far less its evaluations and saves, or None where a
        time is missing or no training time is left
    """
    try:
        seconds = float(state["elapsed_seconds"]) - float(state["eval_seconds"]) - float(state["save_seconds"])
        steps = int(state["num_timesteps"])
    except (KeyError, TypeError, ValueError):
        return None
    return steps / seconds if seconds > 0 else None


def checkpoint_progress(folder: Path) -> CheckpointProgress | None:
    """:return: How far the checkpoint in ``folder`` got, or None when there is none (or it is unreadable)"""
    state = _read_state_file(folder) or {}
    step = state.get("num_timesteps")
    if not isinstance(step, int):
        return None
    curve = state.get("curve")
    try:
        returns = [float(value) for value in curve["results"][-1]]  # type: ignore[index]
        evaluation = int(curve["timesteps"][-1]), sum(returns) / len(returns)  # type: ignore[index]
    except (TypeError, KeyError, IndexError, ValueError, ZeroDivisionError):
        evaluation = None
    return CheckpointProgress(step, evaluation, training_pace(state))


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


def training_signature(job: Job) -> dict[str, Any]:
    """:return: :func:`job_signature` without the suite and the budget: what two runs must share to be one training"""
    return {key: value for key, value in job_signature(job).items() if key not in ("suite", "steps")}


def continuation_problem(job: Job, settings: dict[str, str]) -> str | None:
    """
    :param job: A job that would continue a shorter run
    :param settings: The settings it trains with (stored form)
    :return: Why its training depends on its budget, so that a shorter run's final state is not its own state at that
        step, or None when it does not
    """
    if job.zoo_algo not in CONTINUABLE_ALGOS:
        return f"{job.zoo_algo}'s training follows its budget (only {', '.join(CONTINUABLE_ALGOS)} continue)"
    scheduled = [key for key in SCHEDULED_SETTINGS if settings.get(key, "").startswith(("'", '"'))]  # a str's repr
    if scheduled:
        return f"its schedules follow the budget ({', '.join(scheduled)})"
    return None


def final_state_to_continue(
    job: Job, shorter: list[Job], checkpoints: Path, settings: dict[str, str]
) -> tuple[Job, dict[str, Any]] | None:
    """
    The final state ``job`` would start from: that of the longest of ``shorter`` that trained the same way for fewer
    steps. There is none where ``job`` has a checkpoint of its own that it would resume, its training depends on its
    budget (:func:`continuation_problem`), or no such final state exists, was saved under other settings, or stopped
    at a step off the evaluation grid or not below ``job``'s budget.

    :param job: A job without a result
    :param shorter: Jobs of another suite, the candidates
    :param checkpoints: The folder of checkpoints and kept final states
    :param settings: The settings ``job`` trains with (stored form)
    :return: The shorter job and its final state, or None
    """
    if read_state(job.checkpoint_path(checkpoints), job, settings) is not None or continuation_problem(job, settings):
        return None
    signature = training_signature(job)
    finals = {
        other: _read_state_file(other.final_path(checkpoints)) or {}
        for other in shorter
        if training_signature(other) == signature
    }
    candidates = [
        (other, final)
        for other, final in finals.items()
        if final.get("settings") == settings
        and isinstance(final.get("num_timesteps"), int)
        and final["num_timesteps"] < job.steps
        and final["num_timesteps"] % job.eval_freq == 0
    ]
    return max(candidates, key=lambda candidate: candidate[1]["num_timesteps"], default=None)


def continue_from_final(job: Job, shorter: list[Job], checkpoints: Path, settings: dict[str, str]) -> str | None:
    """
    Start ``job`` from the final state of the same training in a shorter run (:func:`final_state_to_continue`): the
    kept final state (:meth:`Job.final_path`) becomes ``job``'s checkpoint, which :func:`read_state` then accepts, with
    ``continued_from`` naming the run it came from (its suite, algorithm, step, and the commit and torch threads of its
    last part; and what that run continued, if anything).

    :param job: A job without a result
    :param shorter: Jobs of another suite, the candidates
    :param checkpoints: The folder of checkpoints and kept final states
    :param settings: The settings ``job`` trains with (stored form)
    :return: A line saying which run ``job`` continues, or None when it starts as it would have
    """
    found = final_state_to_continue(job, shorter, checkpoints, settings)
    if found is None:
        return None
    source, final = found
    state = dict(final, job=job_signature(job))
    state.pop("final", None)  # the shorter run's end, this one's start
    state["continued_from"] = {
        "suite": source.suite,
        "algo": source.algo,
        "step": state["num_timesteps"],
        "commit": state.pop("commit", None),
        "torch_threads": state.pop("torch_threads", None),
        **({"machine": state.pop("machine")} if "machine" in state else {}),
        **({"continued_from": state["continued_from"]} if state.get("continued_from") else {}),
    }
    folder = job.checkpoint_path(checkpoints)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source.final_path(checkpoints), partial)
    (partial / STATE_FILE).write_text(json.dumps(state, indent=1))
    shutil.rmtree(folder, ignore_errors=True)  # a checkpoint it would not resume
    partial.rename(folder)
    return f"{job.name} continues {source.suite}'s {source.name} from its final state at {state['num_timesteps']} steps"


def result_to_adopt(
    job: Job, others: list[Job], results_dir: Path, settings: dict[str, str]
) -> tuple[Job, dict[str, Any]] | None:
    """
    The finished result of another suite's run that is ``job`` itself: the same training (:func:`training_signature`)
    and budget, trained with the settings ``job`` would train with now.

    :param job: A job without a result
    :param others: Jobs of another suite, the candidates
    :param results_dir: The result store
    :param settings: The settings ``job`` trains with (stored form)
    :return: That run and its result record, or None
    """
    signature = training_signature(job)
    for other in others:
        path = other.result_path(results_dir)
        if other.steps != job.steps or training_signature(other) != signature or not path.exists():
            continue
        try:
            result = load_result(path, other)
        except ResultError:
            continue
        if result.get("hyperparams") == settings:
            return other, result
    return None


def adopt_result(job: Job, others: list[Job], results_dir: Path, settings: dict[str, str]) -> str | None:
    """
    Store the result of the same run in another suite (:func:`result_to_adopt`) as ``job``'s, its numbers unchanged,
    with ``adopted_from`` naming that suite and its name for the algorithm.

    :param job: A job without a result
    :param others: Jobs of another suite, the candidates
    :param results_dir: The result store
    :param settings: The settings ``job`` trains with (stored form)
    :return: A line saying which run ``job`` adopted, or None when there is none to adopt
    """
    found = result_to_adopt(job, others, results_dir, settings)
    if found is None:
        return None
    source, result = found
    adopted = dict(result, suite=job.suite, algo=job.algo, adopted_from={"suite": source.suite, "algo": source.algo})
    write_result(job.result_path(results_dir), adopted)
    return f"{job.name} adopts {source.suite}'s {source.name} (final return {result['final_return']:.1f})"
