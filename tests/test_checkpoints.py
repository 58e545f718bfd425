"""Mid-run checkpoints of benchmark jobs: an interrupted run resumes where its last checkpoint left it."""

import contextlib
import copy
import fcntl
import json
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch as th
import yaml
from gymnasium import spaces
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from benchmarks import checkpoints as checkpoints_module
from benchmarks.checkpoints import (
    PairedEvaluation,
    RunCheckpoint,
    TimedEvalCallback,
    adopt_result,
    checkpoint_progress,
    continue_from_final,
    job_signature,
    read_state,
    recover_interrupted_save,
    stale_checkpoint,
    training_pace,
)
from benchmarks.cli import main
from benchmarks.results import REQUIRED_KEYS, SCHEMA, TRAINING_RETURN, load_result, write_result
from benchmarks.stamp import git_commit, machine
from benchmarks.suite import Job, load_suite
from benchmarks.training import run_job, run_job_safely
from sb3_mpo import MPO
from sb3_mpo.common.buffers import end_newest_episodes

SPEC = {
    "name": "resumable",
    "description": "Test suite.",
    "eval_episodes": 2,
    "envs": {
        "Pendulum-v1": {
            "steps": 300,
            "eval_freq": 100,
            "seeds": [0],
            "algos": ["mpo"],
            "hyperparams": {
                "mpo": {"learning_starts": 50, "batch_size": 16, "n_action_samples": 4, "policy_kwargs": "dict(net_arch=[8])"}
            },
        }
    },
}


@pytest.fixture
def suite_path(tmp_path: Path) -> Path:
    path = tmp_path / "resumable.yml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make every run save its checkpoint at the first rollout from ``step`` on, then fail, as if stopped there."""
    save = RunCheckpoint.save

    def save_then_stop(self: RunCheckpoint) -> None:
        if self.model.num_timesteps >= step:
            save(self)
            raise RuntimeError("simulated interruption")

    monkeypatch.setattr(RunCheckpoint, "save", save_then_stop)


def test_interrupted_run_resumes_with_its_model_replay_buffer_and_schedule(suite_path, tmp_path, monkeypatch):
    (job,) = load_suite(suite_path).jobs
    checkpoints = tmp_path / "checkpoints"
    interrupt_at_step(monkeypatch, 150)  # between the evaluations at 100 and 200
    _, result, error = run_job_safely(job, checkpoints, checkpoint_minutes=0)
    assert result is None and "simulated interruption" in error
    assert checkpoint_progress(job.checkpoint_path(checkpoints)).step == 150
    monkeypatch.undo()

    restored = {}

    def spy(*args, **kwargs):
        model = restore(*args, **kwargs)
        newest = model.replay_buffer.pos - 1
        restored.update(
            size=model.replay_buffer.size(), ended=model.replay_buffer.dones[newest, 0], n_updates=model._n_updates
        )
        return model

    restore = checkpoints_module.restore
    monkeypatch.setattr(checkpoints_module, "restore", spy)
    resumed = run_job(job, checkpoints, checkpoint_minutes=0, torch_threads=2)  # a leg may use other threads
    uninterrupted = run_job(job)  # (and sets this process back to one thread)

    # Saved at the start of step 151's rollout: 150 stored transitions and the updates of steps 51-150
    # (learning_starts=50, one per step); the resumed run carries on from there and loses no update
    assert restored["size"] == 150 and restored["n_updates"] == 100
    assert restored["ended"] == 1.0, "the stored episode must end where the checkpoint cut it"
    here = {"commit": git_commit(), "machine": machine()}
    # the leg that starts at the resume, and the one before it, as its checkpoint recorded it
    assert resumed["resumes"] == [{"step": 150, **here, "torch_threads": 2, "before": {**here, "torch_threads": 1}}]
    assert uninterrupted["resumes"] == [] and (resumed["torch_threads"], uninterrupted["torch_threads"]) == (2, 1)
    assert uninterrupted["commit"] == git_commit(), "a worker records the commit of the code it imported"
    assert [point["step"] for point in resumed["curve"]] == [100, 200, 300], "evaluations keep their schedule"
    assert resumed["curve"][0] == uninterrupted["curve"][0], "the evaluation before the interruption is kept as it was"
    assert "train/temperature" in resumed["curve"][0]["train"], "with what training had logged by then"
    assert resumed["num_timesteps"] == 300 and resumed["n_updates"] == uninterrupted["n_updates"] == 250
    assert resumed["train_seconds"] > 0 and resumed["checkpoint_seconds"] > 0


def test_a_run_saves_at_rollout_starts_once_the_interval_has_passed(suite_path, tmp_path, monkeypatch):
    """Train_freq 64: saves fall on rollout boundaries (multiples of 64), never twice at one step, never at the end."""
    suite = copy.deepcopy(SPEC)
    suite["envs"]["Pendulum-v1"]["steps"] = 320
    suite["envs"]["Pendulum-v1"]["hyperparams"]["mpo"] |= {"train_freq": 64, "gradient_steps": 2}
    suite_path.write_text(yaml.safe_dump(suite))
    (job,) = load_suite(suite_path).jobs
    saves: list[int] = []
    save = RunCheckpoint.save

    def record(self: RunCheckpoint) -> None:
        saves.append(self.model.num_timesteps)
        save(self)

    monkeypatch.setattr(RunCheckpoint, "save", record)
    run_job(job, tmp_path, checkpoint_minutes=0)
    assert saves == [64, 128, 192, 256]
    saves.clear()
    run_job(job, tmp_path / "other", checkpoint_minutes=60)
    assert saves == [], "no save before the interval has passed"


def test_training_pace_leaves_out_evaluations_and_saves() -> None:
    state = {"num_timesteps": 850, "elapsed_seconds": 100.0, "eval_seconds": 10.0, "save_seconds": 5.0}
    assert training_pace(state) == pytest.approx(10.0)
    assert training_pace({**state, "eval_seconds": 95.0}) is None, "no training time left"
    assert training_pace({"num_timesteps": 850, "elapsed_seconds": 100.0}) is None, "a checkpoint that does not say"


def test_cli_status_shows_the_checkpoint_and_run_resumes_then_removes_it(suite_path, tmp_path, monkeypatch, capsys):
    (job,) = load_suite(suite_path).jobs
    results = tmp_path / "results"
    folder = job.checkpoint_path(results / ".checkpoints")  # the default place, inside the result store
    interrupt_at_step(monkeypatch, 100)
    run_job_safely(job, results / ".checkpoints", checkpoint_minutes=0)
    monkeypatch.undo()

    assert main(["status", str(suite_path), "--results", str(results)]) == 0
    state = json.loads((folder / "state.json").read_text())
    curve = state["curve"]
    assert curve["timesteps"] == [100], "the run evaluated at 100 steps before its checkpoint"
    newest = f"last evaluation {np.mean(curve['results'][-1]):.1f} at 100"
    pace = 100 / (state["elapsed_seconds"] - state["eval_seconds"] - state["save_seconds"])
    own = f"{pace:.1f} env steps/s so far: ~{(job.steps - 100) / pace / 60:.0f} min left"
    assert f"todo  {job.name}  (checkpoint at 100 steps, {newest}, {own})" in capsys.readouterr().out
    assert main(["run", str(suite_path), "--results", str(results), "--workers", "1", "--checkpoint-minutes", "0"]) == 0
    result = load_result(job.result_path(results), job)
    assert [resume["step"] for resume in result["resumes"]] == [100]
    assert not folder.exists(), "the checkpoint of a finished run must be removed"


def test_a_checkpoint_resumes_only_the_job_that_wrote_it(tmp_path):
    job = Job("suite", "mpo", "Pendulum-v1", 0, 1000, 100, 10, hyperparams={"learning_rate": 1e-3})
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "state.json").write_text("{not json")
    assert read_state(folder, job) is None
    (folder / "state.json").write_text(json.dumps({"job": job_signature(job), "num_timesteps": 100}))
    assert read_state(folder, job)["num_timesteps"] == 100
    for other in (
        Job("suite", "mpo", "Pendulum-v1", 1, 1000, 100, 10, hyperparams={"learning_rate": 1e-3}),
        Job("suite", "mpo", "Pendulum-v1", 0, 2000, 100, 10, hyperparams={"learning_rate": 1e-3}),
        Job("suite", "mpo", "Pendulum-v1", 0, 1000, 100, 10, hyperparams={"learning_rate": 3e-4}),
    ):
        assert read_state(folder, other) is None
    assert read_state(tmp_path / "nothing", job) is None


def checkpointed_at_150(suite_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Job, Path, Path]:
    """The suite's job interrupted at step 150, right after a checkpoint: the job, the checkpoints and its folder."""
    (job,) = load_suite(suite_path).jobs
    checkpoints = tmp_path / "checkpoints"
    interrupt_at_step(monkeypatch, 150)
    run_job_safely(job, checkpoints, checkpoint_minutes=0)
    monkeypatch.undo()
    return job, checkpoints, job.checkpoint_path(checkpoints)


def test_a_save_interrupted_between_its_renames_leaves_the_previous_checkpoint_to_resume(suite_path, tmp_path, monkeypatch):
    """The process dies after the old checkpoint moved aside and before the new one moved in: the run resumes the old."""
    job, checkpoints, folder = checkpointed_at_150(suite_path, tmp_path, monkeypatch)
    folder.rename(folder.with_name(folder.name + ".old"))  # where save() leaves it between its renames
    assert main(["status", str(suite_path), "--checkpoints", str(checkpoints), "--results", str(tmp_path)]) == 0
    assert checkpoint_progress(folder).step == 150, "status put it back"
    folder.rename(folder.with_name(folder.name + ".old"))
    assert run_job(job, checkpoints, checkpoint_minutes=60)["resumes"][0]["step"] == 150


def test_a_complete_checkpoint_left_beside_its_folder_is_put_in_place(suite_path, tmp_path, monkeypatch):
    """
    The new checkpoint written in full (its state.json last) and the folder gone: the process died after the old one
    moved aside (a save) or was removed (a continuation). The newer one is resumed, the older removed; a new one whose
    state.json is missing (died while writing it) leaves the older one to resume.
    """
    _, _, folder = checkpointed_at_150(suite_path, tmp_path, monkeypatch)
    partial, old = (folder.with_name(folder.name + suffix) for suffix in (".partial", ".old"))
    shutil.copytree(folder, old)
    (old / "state.json").write_text(json.dumps({**json.loads((old / "state.json").read_text()), "num_timesteps": 100}))
    folder.rename(partial)
    recover_interrupted_save(folder)
    assert checkpoint_progress(folder).step == 150 and not partial.exists() and not old.exists()
    shutil.copytree(folder, old)
    folder.rename(partial)
    (partial / "state.json").unlink()  # died before writing it
    recover_interrupted_save(folder)
    assert checkpoint_progress(folder).step == 150 and partial.exists(), "the older one, complete, is resumed"


def test_a_checkpoint_that_names_no_run_is_not_resumed_and_the_run_and_status_say_so(suite_path, tmp_path, capsys):
    """A folder whose state.json is missing (a save that died writing it) or names no run: the run starts over, saying so."""
    (job,) = load_suite(suite_path).jobs
    checkpoints = tmp_path / "checkpoints"
    folder = job.checkpoint_path(checkpoints)
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"num_timesteps": 5}))  # no job signature
    stale = stale_checkpoint(folder, job, None)
    assert stale is not None and stale.how == "without a state.json that names its run"
    assert main(["status", str(suite_path), "--checkpoints", str(checkpoints), "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"todo  {job.name}  (checkpoint at 5 steps, saved without a state.json that names its run, the run will" in out
    (folder / "state.json").unlink()
    assert main(["status", str(suite_path), "--checkpoints", str(checkpoints), "--results", str(tmp_path)]) == 0
    assert f"todo  {job.name}  (a checkpoint, saved without a state.json that names its run" in capsys.readouterr().out
    assert stale_checkpoint(tmp_path / "nothing", job, None) is None


def test_a_checkpoint_saved_under_other_settings_is_not_resumed_and_the_run_says_so(suite_path, tmp_path, capsys):
    """An RL Zoo entry or override edited while a run was interrupted: the run starts over, under the new settings."""
    (job,) = load_suite(suite_path).jobs
    checkpoints = tmp_path / "checkpoints"
    folder = job.checkpoint_path(checkpoints)
    settings = {"batch_size": "16", "gamma": "0.99"}
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"job": job_signature(job), "settings": settings, "num_timesteps": 5}))
    assert read_state(folder, job, settings)["num_timesteps"] == 5
    assert read_state(folder, job) is not None, "without settings to compare, the job alone decides"
    assert read_state(folder, job, {**settings, "gamma": "0.98"}) is None
    assert stale_checkpoint(folder, job, settings) is None
    assert stale_checkpoint(folder, job, {**settings, "gamma": "0.98"}) == ("under other settings", "gamma: 0.99 -> 0.98")
    legacy = {"job": job_signature(job), "num_timesteps": 5}  # saved before checkpoints kept their settings
    (folder / "state.json").write_text(json.dumps(legacy))
    assert read_state(folder, job, settings) is not None and stale_checkpoint(folder, job, settings) is None

    # status says so, and a run whose checkpoint holds other settings trains from step 0 and records no resume
    (folder / "state.json").write_text(json.dumps({**legacy, "settings": {"batch_size": "64"}}))
    assert main(["status", str(suite_path), "--checkpoints", str(checkpoints), "--results", str(tmp_path)]) == 0
    stale = "saved under other settings, the run will start over: batch_size: 64 -> 16; "
    expected = f"todo  {job.name}  (checkpoint at 5 steps, {stale}"
    assert expected in capsys.readouterr().out
    result = run_job(job, checkpoints, checkpoint_minutes=60)
    assert result["resumes"] == [] and result["hyperparams"]["batch_size"] == "16"
    error = capsys.readouterr().err
    assert f"{job.name}: its checkpoint was saved under other settings, it starts over: batch_size: 64 -> 16; " in error


def test_a_checkpoint_of_another_set_up_of_the_job_is_not_resumed_and_the_run_says_so(suite_path, tmp_path, capsys):
    """A suite whose evaluation changed while a run was interrupted: status and the run name the difference."""
    (job,) = load_suite(suite_path).jobs
    checkpoints = tmp_path / "checkpoints"
    folder = job.checkpoint_path(checkpoints)
    folder.mkdir(parents=True)
    signature = {**job_signature(job), "eval_freq": job.eval_freq * 2}
    (folder / "state.json").write_text(json.dumps({"job": signature, "num_timesteps": 5}))
    assert read_state(folder, job) is None
    changes = f"eval_freq: {job.eval_freq * 2} -> {job.eval_freq}"
    assert stale_checkpoint(folder, job, None) == ("for another set-up of the run", changes)
    del signature["eval_episodes"]  # a checkpoint from code that did not record it
    (folder / "state.json").write_text(json.dumps({"job": signature, "num_timesteps": 5}))
    unrecorded = f"eval_episodes: not recorded (the checkpoint's code) -> {job.eval_episodes}; {changes}"
    assert stale_checkpoint(folder, job, None) == ("for another set-up of the run", unrecorded)
    signature["eval_episodes"] = job.eval_episodes
    (folder / "state.json").write_text(json.dumps({"job": signature, "num_timesteps": 5}))
    assert main(["status", str(suite_path), "--checkpoints", str(checkpoints), "--results", str(tmp_path)]) == 0
    assert f"(checkpoint at 5 steps, saved for another set-up of the run, the run will start over: {changes})" in (
        capsys.readouterr().out
    )
    assert run_job(job, checkpoints, checkpoint_minutes=60)["resumes"] == []
    assert f"{job.name}: its checkpoint was saved for another set-up of the run, it starts over: {changes}" in (
        capsys.readouterr().err
    )


def test_a_longer_suite_continues_a_kept_final_state(suite_path, tmp_path, monkeypatch, capsys):
    """run --keep-final keeps a finished run's state; the same training's longer run starts there (run --continue-from)."""
    from benchmarks.zoo import zoo_settings

    results = tmp_path / "results"
    checkpoints = results / ".checkpoints"
    (short_job,) = load_suite(suite_path).jobs
    longer = copy.deepcopy(SPEC)
    longer["name"] = "longer"
    longer["envs"]["Pendulum-v1"]["steps"] = 500
    longer_path = tmp_path / "longer.yml"
    longer_path.write_text(yaml.safe_dump(longer))
    (long_job,) = load_suite(longer_path).jobs
    common = ["--results", str(results), "--workers", "1", "--checkpoint-minutes", "60"]

    assert main(["run", str(suite_path), *common, "--keep-final"]) == 0
    short = load_result(short_job.result_path(results), short_job)
    assert (
        checkpoint_progress(short_job.final_path(checkpoints)).step == 300
        and not short_job.checkpoint_path(checkpoints).exists()
    )
    assert main(["status", str(suite_path), "--results", str(results)]) == 0
    assert f"done  {short_job.name}  (final state kept)" in capsys.readouterr().out
    assert main(["status", str(longer_path), "--results", str(results), "--continue-from", str(suite_path)]) == 0
    expected = f"todo  {long_job.name}  (would continue resumable's {short_job.name} from its final state at 300 steps)"
    assert expected in capsys.readouterr().out

    # The continuation becomes the longer job's checkpoint; interrupted after a save of its own, it resumes as such
    line = continue_from_final(long_job, [short_job], checkpoints, zoo_settings(long_job))
    assert line == f"{long_job.name} continues resumable's {short_job.name} from its final state at 300 steps"
    interrupt_at_step(monkeypatch, 400)
    _, result, error = run_job_safely(long_job, checkpoints, checkpoint_minutes=0)
    assert result is None and "simulated interruption" in error
    monkeypatch.undo()
    assert read_state(long_job.checkpoint_path(checkpoints), long_job)["continued_from"]["step"] == 300
    assert main(["run", str(longer_path), *common, "--continue-from", str(suite_path)]) == 0
    assert "0 of 1 runs continue a final state of suite resumable" in capsys.readouterr().out, "its own checkpoint first"

    result = load_result(long_job.result_path(results), long_job)
    assert result["continued_from"] == {
        "suite": "resumable",
        "algo": "mpo",
        "step": 300,
        "commit": git_commit(),
        "torch_threads": 1,
        "machine": machine(),
    }
    assert [resume["step"] for resume in result["resumes"]] == [400], "the continuation is not recorded as a resume"
    assert result["curve"][:3] == short["curve"], "the first part of the curve is the shorter run's"
    assert [point["step"] for point in result["curve"]] == [100, 200, 300, 400, 500]
    assert result["n_updates"] == short["n_updates"] + 200, "the updates of steps 301-500 come on top of the shorter run's"
    assert checkpoint_progress(short_job.final_path(checkpoints)).step == 300, "the final state stays, for a longer run still"
    assert not long_job.checkpoint_path(checkpoints).exists()

    short_job.result_path(results).unlink()  # a newer run of the shorter job, without --keep-final
    assert main(["run", str(suite_path), *common]) == 0
    assert not short_job.final_path(checkpoints).exists(), "the final state of the older run went with its result"


def test_a_kept_final_state_whose_result_was_lost_gives_the_result_again_without_a_resume(suite_path, tmp_path):
    """
    With --keep-final the worker saves the finished run in its checkpoint folder, which its driver renames once the
    result is stored; a driver that stops in between leaves that final state as the job's checkpoint. The next run
    trains nothing from it and records no resume: the same curve, updates and timings as the lost result.
    """
    (job,) = load_suite(suite_path).jobs
    checkpoints = tmp_path / "checkpoints"
    first = run_job(job, checkpoints, checkpoint_minutes=60, keep_final=True)  # its driver stops before storing it
    assert read_state(job.checkpoint_path(checkpoints), job)["final"] is True
    again = run_job(job, checkpoints, checkpoint_minutes=60, keep_final=True)
    assert again["resumes"] == [] and again["curve"] == first["curve"] and again["n_updates"] == first["n_updates"]
    assert again["checkpoint_seconds"] == first["checkpoint_seconds"], "neither counts its final save"
    assert again["train_seconds"] == pytest.approx(first["train_seconds"], abs=0.25), "nor trains in it"


def test_only_the_same_training_on_the_evaluation_grid_and_independent_of_its_budget_continues(tmp_path):
    settings = {"batch_size": "16", "learning_rate": "0.001"}
    job = Job("long", "mpo", "Pendulum-v1", 0, 1000, 100, 10, hyperparams={"batch_size": 16})

    def final_state(steps: int, saved: dict[str, str] = settings, folder: Path = tmp_path, **changes) -> Job:
        """A kept final state of a shorter job in ``folder`` (only its state file: what the choice reads)"""
        short = Job("short", job.algo, job.env, job.seed, steps, job.eval_freq, job.eval_episodes, job.hyperparams)
        short = Job(**{**short.__dict__, **changes})
        short.final_path(folder).mkdir(parents=True, exist_ok=True)
        state = {"job": job_signature(short), "settings": saved, "num_timesteps": steps, "resumes": [], "commit": "abc1234"}
        state["torch_threads"] = 2
        (short.final_path(folder) / "state.json").write_text(json.dumps(state))
        return short

    others = [
        final_state(300),
        final_state(600, seed=1),
        final_state(700, eval_freq=50),
        final_state(800, hyperparams={"batch_size": 32}),
        final_state(900, {**settings, "learning_rate": "0.0003"}),
        final_state(450),  # off the evaluation grid of eval_freq 100
        final_state(1000),  # not shorter
    ]
    assert continue_from_final(job, others, tmp_path, settings) is not None
    state = read_state(job.checkpoint_path(tmp_path), job, settings)
    assert state["num_timesteps"] == 300 and state["continued_from"] == {
        "suite": "short",
        "algo": "mpo",
        "step": 300,
        "commit": "abc1234",
        "torch_threads": 2,
    }
    assert "commit" not in state, "the shorter run's last part is recorded as such, not as this run's"
    assert continue_from_final(job, [final_state(500)], tmp_path, settings) is None, "its own checkpoint comes first"
    assert read_state(job.checkpoint_path(tmp_path), job, settings)["num_timesteps"] == 300

    # each in a folder of its own, where job has no checkpoint yet: a refusal is then the schedule's or the algorithm's
    assert continue_from_final(job, [final_state(300, folder=tmp_path / "same")], tmp_path / "same", settings)
    for index, (other, other_settings) in enumerate(
        (
            (Job(**{**job.__dict__, "algo": "dqn"}), settings),
            (job, {**settings, "learning_rate": "'lin_1e-3'"}),
            (job, {**settings, "actor_learning_rate": "'lin_1e-4'"}),  # MPO's actor's own rate, read as rl_zoo3 reads it
        )
    ):
        fresh = tmp_path / f"fresh{index}"
        short = final_state(300, other_settings, folder=fresh, algo=other.algo)
        assert continue_from_final(other, [short], fresh, other_settings) is None, "its training follows its budget"


def test_keep_final_and_continue_from_need_checkpoints(suite_path, tmp_path, capsys):
    for option in (["--keep-final"], ["--continue-from", "quick"]):
        with pytest.raises(SystemExit) as exit_:
            main(["run", str(suite_path), "--results", str(tmp_path / "results"), "--no-checkpoints", *option])
        assert exit_.value.code == 2
        assert "--keep-final and --continue-from need checkpoints: drop --no-checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "results").exists(), "nothing ran"


@pytest.mark.parametrize("optimize_memory_usage", [False, True])
def test_end_newest_episodes_marks_a_truncation_of_open_episodes_only(optimize_memory_usage):
    box = spaces.Box(-1, 1, (2,), dtype=np.float32)
    buffer = ReplayBuffer(
        8,
        box,
        box,
        n_envs=3,
        optimize_memory_usage=optimize_memory_usage,
        handle_timeout_termination=not optimize_memory_usage,
    )
    end_newest_episodes(buffer)  # empty: nothing to end
    assert not buffer.dones.any()
    for done in ([0, 0, 0], [0, 0, 1]):
        obs = np.zeros((3, 2), dtype=np.float32)
        buffer.add(obs, obs, obs, np.zeros(3), np.array(done, dtype=np.float32), [{}, {}, {}])
    end_newest_episodes(buffer, np.array([True, False, True]))
    np.testing.assert_array_equal(buffer.dones[1], [1, 0, 1])  # env 1 left alone, env 2 had already ended
    np.testing.assert_array_equal(buffer.dones[0], [0, 0, 0])
    # A truncation keeps its bootstrap; with optimize_memory_usage the next observation is lost: a termination
    np.testing.assert_array_equal(buffer.timeouts[1], [0, 0, 0] if optimize_memory_usage else [1, 0, 0])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux's /proc")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_driver_stops_its_workers(suite_path, tmp_path, stop):
    """`kill DRIVER`, even `kill -9`, ends the training processes too (the checkpoint keeps their progress): no orphan."""
    suite = SPEC | {"envs": {"Pendulum-v1": SPEC["envs"]["Pendulum-v1"] | {"steps": 1_000_000, "eval_freq": 500_000}}}
    suite_path.write_text(yaml.safe_dump(suite))
    command = [sys.executable, "-m", "benchmarks", "run", str(suite_path), "--results", str(tmp_path), "--workers", "1"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.monotonic() + 60, []
    while not workers and time.monotonic() < deadline:
        time.sleep(0.5)
        workers = [int(pid) for pid in Path(f"/proc/{driver.pid}/task/{driver.pid}/children").read_text().split()]
    assert workers, "the driver started no worker"
    time.sleep(2)  # the worker is training
    driver.send_signal(stop)
    assert driver.wait(timeout=30) != 0
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived its driver"


def test_each_evaluation_keeps_the_return_of_the_training_episodes_since_the_previous_one(tmp_path):
    """Against SB3's own record of the episodes (``ep_info_buffer``): 200-step episodes, evaluations every 350 steps."""
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=2000, seed=0)  # random actions: no update is needed
    evaluation = TimedEvalCallback(
        make_vec_env("Pendulum-v1", seed=1), eval_freq=350, n_eval_episodes=1, log_path=str(tmp_path), verbose=0
    )
    model.learn(1000, callback=evaluation)
    episodes = [info["r"] for info in model.ep_info_buffer]  # ended at steps 200, 400, ..., 1000
    assert len(episodes) == 5
    # at 350: the first episode; at 700: the two that ended at 400 and 600
    expected = [episodes[0], np.mean(episodes[1:3])]
    np.testing.assert_allclose([logged[TRAINING_RETURN] for logged in evaluation.diagnostics], expected, rtol=1e-6)
    # those that ended at 800 and 1000 wait for the next evaluation, through a checkpoint too
    assert evaluation.training_returns == pytest.approx(episodes[3:])
    resumed = TimedEvalCallback(make_vec_env("Pendulum-v1", seed=1), log_path=str(tmp_path))
    resumed.restore_curve(json.loads(json.dumps(evaluation.curve_state)), eval_seconds=0.0, n_calls=1000)
    assert resumed.training_returns == evaluation.training_returns and resumed.diagnostics == evaluation.diagnostics
    # the final evaluation runs on step 1000, which the training loop already counted: its episode counts once
    evaluation.evaluate_final(1000)
    assert evaluation.diagnostics[-1][TRAINING_RETURN] == pytest.approx(np.mean(episodes[3:]))
    assert evaluation.training_returns == []


def test_a_paired_evaluation_scores_the_clipped_gaussians_mean_on_episodes_that_start_alike():
    """Against evaluate_policy on a model built with deterministic_action="mean" and the same weights."""
    settings = dict(learning_starts=50, batch_size=16, n_action_samples=4, seed=0)
    model = MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), **settings)
    with th.no_grad():
        model.actor.mu.bias.fill_(1.3)  # the mean beyond the box: the mode and the clipped Gaussian's mean differ
    assert PairedEvaluation.applies_to(model)
    result = PairedEvaluation(make_vec_env("Pendulum-v1", seed=7)).evaluate(model, 2)
    assert model.actor.deterministic_action == "mode", "the model's own deterministic action is restored"
    reference = MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8], deterministic_action="mean"), **settings)
    reference.actor.load_state_dict(model.actor.state_dict())
    env = make_vec_env("Pendulum-v1", seed=7)
    returns, lengths = evaluate_policy(reference, env, 2, deterministic=True, return_episode_rewards=True)
    assert result["name"] == "mean_action" and result["lengths"] == lengths
    np.testing.assert_allclose(result["returns"], returns, rtol=1e-6)
    assert result["mean"] == pytest.approx(np.mean(returns))
    mode, _ = evaluate_policy(model, make_vec_env("Pendulum-v1", seed=7), 2, deterministic=True)
    assert mode != pytest.approx(result["mean"], rel=1e-3)
    assert not PairedEvaluation.applies_to(SAC("MlpPolicy", "Pendulum-v1"))
    squashed = MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8], action_bounding="tanh"), **settings)
    assert not PairedEvaluation.applies_to(squashed)
    with pytest.raises(ValueError, match=r"paired_evaluation='median' is invalid, expected one of \('mean_action',\)"):
        PairedEvaluation(env, "median")


def test_a_suites_paired_evaluation_follows_every_evaluation_and_survives_a_resume(tmp_path, monkeypatch):
    """Paired at 100, 200 and the final 250 (between two scheduled evaluations), through a checkpoint; training alike."""
    envs = {"Pendulum-v1": {**SPEC["envs"]["Pendulum-v1"], "steps": 250}}
    (job,) = load_suite(write_spec(tmp_path, {**SPEC, "envs": envs, "paired_evaluation": "mean_action"})).jobs
    checkpoints = tmp_path / "checkpoints"
    interrupt_at_step(monkeypatch, 150)
    assert run_job_safely(job, checkpoints, checkpoint_minutes=0)[1] is None
    monkeypatch.undo()
    resumed, uninterrupted = run_job(job, checkpoints, checkpoint_minutes=0), run_job(job)
    for result in (resumed, uninterrupted):
        assert [point["step"] for point in result["curve"]] == [100, 200, 250]
        assert [len(point["mean_action"]["returns"]) for point in result["curve"]] == [2, 2, 2]
    assert resumed["curve"][0]["mean_action"] == uninterrupted["curve"][0]["mean_action"], "kept through the checkpoint"
    (plain,) = load_suite(write_spec(tmp_path, {**SPEC, "envs": envs})).jobs
    unpaired = run_job(plain)
    assert all("mean_action" not in point for point in unpaired["curve"])
    # the second evaluation changes nothing of the training or of the run's own evaluations
    assert [point["returns"] for point in unpaired["curve"]] == [point["returns"] for point in uninterrupted["curve"]]
    assert unpaired["curve"][-1]["train"] == uninterrupted["curve"][-1]["train"]
    with pytest.raises(ValueError, match=r"paired_evaluation: must be one of \('mean_action',\), got 'median'"):
        load_suite(write_spec(tmp_path, {**SPEC, "paired_evaluation": "median"}))
    sac_only = {"Pendulum-v1": {**SPEC["envs"]["Pendulum-v1"], "algos": ["sac"], "hyperparams": {}}}
    with pytest.raises(ValueError, match=r"paired_evaluation: pairs MPO's evaluations, and the suite runs no MPO"):
        load_suite(write_spec(tmp_path, {**SPEC, "envs": sac_only, "paired_evaluation": "mean_action"}))


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / f"{spec['name']}.yml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_warnings_given_while_training_are_kept_once_each_and_still_shown(tmp_path):
    evaluation = TimedEvalCallback(make_vec_env("Pendulum-v1", seed=1), log_path=str(tmp_path))

    def warn(text: str) -> None:
        warnings.warn(text, UserWarning)

    def warn_elsewhere(text: str) -> None:
        warnings.warn(text, UserWarning)

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        outer = warnings.showwarning
        with evaluation.warning_record.recording():
            evaluation.num_timesteps = 7
            warn("MPO: a")
            warn_elsewhere("MPO: a")  # the same text from another place: shown twice, kept once
            evaluation.num_timesteps = 9
            warnings.warn("late", RuntimeWarning)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                warn("ignored")  # neither shown nor kept
        assert warnings.showwarning is outer, "the hook outlived its block"
        warn("MPO: after")  # shown, not kept
    assert [str(warning.message) for warning in shown] == ["MPO: a", "MPO: a", "late", "MPO: after"]
    assert evaluation.warning_record.warnings == [
        {"step": 7, "category": "UserWarning", "message": "MPO: a"},
        {"step": 9, "category": "RuntimeWarning", "message": "late"},
    ]
    resumed = TimedEvalCallback(make_vec_env("Pendulum-v1", seed=1), log_path=str(tmp_path))
    resumed.restore_curve(json.loads(json.dumps(evaluation.curve_state)), eval_seconds=0.0, n_calls=9)
    assert resumed.warning_record.warnings == evaluation.warning_record.warnings


def test_a_run_keeps_the_warnings_it_gave_before_a_resume(suite_path, tmp_path, monkeypatch):
    """A trust region of 1e-9 that no multiplier holds, judged every 20 updates: MPO warns once per model, at the end of
    its second window (update 40, before step 150), and again after the resume at step 150 (a loaded model's)."""
    from sb3_mpo import MPO

    (job,) = load_suite(suite_path).jobs
    job = Job(**{**job.__dict__, "hyperparams": {**job.hyperparams, "epsilon_mean": 1e-9}})
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setattr(MPO, "health_check_interval", 20)
    save = RunCheckpoint.save
    interrupt_at_step(monkeypatch, 150)
    assert run_job_safely(job, checkpoints, checkpoint_minutes=0)[1] is None
    monkeypatch.setattr(RunCheckpoint, "save", save)
    result = run_job(job, checkpoints, checkpoint_minutes=0)
    loose = [warning for warning in result["warnings"] if "bounded by epsilon_mean=1e-09" in warning["message"]]
    assert [warning["category"] for warning in loose] == ["UserWarning", "UserWarning"]
    assert loose[0]["step"] < 150 < loose[1]["step"]


def test_a_run_keeps_the_warnings_of_its_set_up_once_at_the_step_training_starts(suite_path, tmp_path, monkeypatch):
    """A warning given while the model is built: kept at step 0; the resumed leg builds (and loads) the model again and
    gives it again, which the record keeps once; one that only the resumed leg's set-up gives is kept at its step."""
    from sb3_mpo import MPO

    (job,) = load_suite(suite_path).jobs
    setup_model = MPO._setup_model

    def warn_when_built(self: MPO) -> None:
        warnings.warn("MPO: built", UserWarning)
        setup_model(self)

    monkeypatch.setattr(MPO, "_setup_model", warn_when_built)
    checkpoints = tmp_path / "checkpoints"
    save = RunCheckpoint.save
    interrupt_at_step(monkeypatch, 150)
    assert run_job_safely(job, checkpoints, checkpoint_minutes=0)[1] is None
    monkeypatch.setattr(RunCheckpoint, "save", save)

    def warn_on_loading(self: MPO) -> None:
        if self.num_timesteps:  # set from the checkpoint when MPO.load builds the model: only on resuming
            warnings.warn("MPO: loaded", UserWarning)
        warn_when_built(self)

    monkeypatch.setattr(MPO, "_setup_model", warn_on_loading)
    result = run_job(job, checkpoints, checkpoint_minutes=0)
    (resumed,) = result["resumes"]
    kept = [warning for warning in result["warnings"] if warning["message"] in ("MPO: built", "MPO: loaded")]
    assert kept == [
        {"step": 0, "category": "UserWarning", "message": "MPO: built"},
        {"step": resumed["step"], "category": "UserWarning", "message": "MPO: loaded"},
    ]


def test_only_the_same_run_finished_under_the_same_settings_is_adopted(tmp_path):
    settings = {"batch_size": "16", "learning_rate": "0.001"}
    job = Job("dev", "mpo_small", "Pendulum-v1", 0, 1000, 100, 10, hyperparams={"batch_size": 16}, base_algo="mpo")

    def finished(name: str, saved: dict[str, str] = settings, **changes) -> Job:
        """A finished run of another suite, the algorithm there called ``name`` (a result file with what the choice reads)"""
        other = Job(**{**job.__dict__, "suite": "screen", "algo": name, **changes})
        record = {key: None for key in REQUIRED_KEYS} | {"schema": SCHEMA, "hyperparams": saved, "final_return": -150.0}
        record |= {"suite": other.suite, "algo": other.algo, "env": other.env, "seed": other.seed, "steps": other.steps}
        record["curve"] = [{"step": other.steps, "mean": -150.0}]
        write_result(other.result_path(tmp_path), record)
        return other

    others = [
        finished("seed", seed=1),
        finished("shorter", steps=500),  # a shorter run is not this one (continue it instead)
        finished("episodes", eval_episodes=5),
        finished("overrides", hyperparams={"batch_size": 32}),
        finished("entry", {**settings, "learning_rate": "0.0003"}),  # its RL Zoo entry changed since
    ]
    assert adopt_result(job, others, tmp_path, settings) is None and not job.result_path(tmp_path).exists()
    same = finished("mpo_b16")
    assert adopt_result(job, [*others, same], tmp_path, settings) == (
        f"{job.name} adopts screen's {same.name} (final return -150.0)"
    )
    adopted = load_result(job.result_path(tmp_path), job)
    assert adopted["adopted_from"] == {"suite": "screen", "algo": "mpo_b16"}
    original = load_result(same.result_path(tmp_path), same)
    assert {key: value for key, value in adopted.items() if key not in ("suite", "algo", "adopted_from")} == {
        key: value for key, value in original.items() if key not in ("suite", "algo")
    }, "the numbers are the other run's, unchanged"


def test_run_adopts_the_same_run_of_another_suite_instead_of_training_it(suite_path, tmp_path, capsys):
    results = tmp_path / "results"
    other = copy.deepcopy(SPEC)
    other["name"] = "adopter"
    other_path = tmp_path / "adopter.yml"
    other_path.write_text(yaml.safe_dump(other))
    (source,), (job,) = load_suite(suite_path).jobs, load_suite(other_path).jobs
    common = ["--results", str(results), "--workers", "1", "--no-checkpoints"]
    assert main(["run", str(suite_path), *common]) == 0
    assert main(["status", str(other_path), "--results", str(results), "--adopt-from", str(suite_path)]) == 0
    assert f"todo  {job.name}  (would adopt resumable's {source.name})" in capsys.readouterr().out
    assert main(["run", str(other_path), *common, "--adopt-from", str(suite_path)]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 runs adopted from suite resumable" in out and "suite adopter: 1 runs, 1 finished, 0 to run" in out
    result = load_result(job.result_path(results), job)
    assert result["adopted_from"] == {"suite": "resumable", "algo": "mpo"}
    assert result["curve"] == load_result(source.result_path(results), source)["curve"]


def test_a_second_runner_leaves_a_run_that_another_runner_has_to_it(suite_path, tmp_path, capsys):
    """While a runner holds a run's lock, another runner on the same store skips it and status says a runner has it."""
    (job,) = load_suite(suite_path).jobs
    arguments = [str(suite_path), "--results", str(tmp_path)]
    lock = tmp_path / ".locks" / job.suite / job.env_folder / f"{job.name}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as other_runner:
        fcntl.flock(other_runner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["run", *arguments]) == 0
        out, err = capsys.readouterr()
        assert f"1 runs are left to another runner, which has them: {job.name}" in err and "0 to run" in out
        assert not job.result_path(tmp_path).exists()
        assert main(["status", *arguments]) == 0
        assert "(a runner holds it: training it now, or after the runs before it)" in capsys.readouterr().out
    assert main(["status", *arguments]) == 0
    assert "a runner holds it" not in capsys.readouterr().out, "released with its runner"


def test_a_status_probing_a_lock_does_not_make_a_starting_runner_leave_the_run(suite_path, tmp_path):
    """status probes each run's lock for an instant: a runner that starts in that instant waits for it, and takes the run."""
    import threading

    from benchmarks import cli

    (job,) = load_suite(suite_path).jobs
    lock = tmp_path / ".locks" / job.suite / job.env_folder / f"{job.name}.lock"
    lock.parent.mkdir(parents=True)
    probe = open(lock, "a")
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.03, probe.close).start()  # the probe lets go 0.03 s later (a real one: microseconds)
    with contextlib.ExitStack() as held:
        assert cli._claim([job], tmp_path, held) == [job]


def test_status_leaves_a_checkpoint_save_of_a_runner_that_holds_the_run_to_it(suite_path, tmp_path, monkeypatch, capsys):
    """Recovering an interrupted save while a runner is between its two renames would break that runner's save."""
    from benchmarks import cli

    (job,) = load_suite(suite_path).jobs
    recovered = []
    monkeypatch.setattr(cli, "recover_interrupted_save", recovered.append)
    arguments = ["status", str(suite_path), "--results", str(tmp_path)]
    lock = tmp_path / ".locks" / job.suite / job.env_folder / f"{job.name}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as runner:
        fcntl.flock(runner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(arguments) == 0
        assert recovered == []
    assert main(arguments) == 0
    assert recovered == [job.checkpoint_path(tmp_path / ".checkpoints")]


def test_adopting_and_continuing_leave_a_run_whose_settings_cannot_be_resolved_to_it(
    suite_path, tmp_path, monkeypatch, capsys
):
    """An RL Zoo entry that can no longer be resolved stops neither --adopt-from nor --continue-from: the run is left."""
    from benchmarks import cli, zoo

    def unresolvable(job):
        raise KeyError("HalfCheetah-v9")

    monkeypatch.setattr(zoo, "zoo_settings", unresolvable)
    (job,) = load_suite(suite_path).jobs
    assert cli._adopt([job], str(suite_path), tmp_path) == [job]
    cli._continue([job], str(suite_path), tmp_path / "checkpoints")
    err = capsys.readouterr().err
    assert err.count(f"{job.name}: its settings cannot be resolved now (KeyError('HalfCheetah-v9'))") == 2


@pytest.mark.parametrize("with_checkpoints", [True, False], ids=["checkpointed", "evaluated"])
def test_a_diverged_run_stops_and_keeps_no_broken_checkpoint(suite_path, tmp_path, monkeypatch, with_checkpoints):
    """
    TD3 trains on after a NaN reaches its critic (its deterministic actor checks nothing); the runner stops it at its
    next save (which it refuses) or, without checkpoints, after its next evaluation, naming the tensor. The last
    checkpoint saved before stays finite.
    """
    suite = copy.deepcopy(SPEC)
    suite["envs"]["Pendulum-v1"]["algos"] = ["td3"]
    suite["envs"]["Pendulum-v1"]["hyperparams"] = {
        "td3": {"learning_starts": 50, "batch_size": 16, "policy_kwargs": "dict(net_arch=[8])"}
    }
    suite_path.write_text(yaml.safe_dump(suite))
    (job,) = load_suite(suite_path).jobs
    train = TD3.train

    def train_then_break(self: TD3, *args, **kwargs) -> None:
        train(self, *args, **kwargs)
        if self.num_timesteps == 150:
            with th.no_grad():
                self.critic.qf0[0].weight[0, 0] = float("nan")

    monkeypatch.setattr(TD3, "train", train_then_break)
    checkpoints = tmp_path / "checkpoints" if with_checkpoints else None
    _, result, error = run_job_safely(job, checkpoints, checkpoint_minutes=0)
    assert result is None and "DivergedError: TD3 diverged" in error
    if not with_checkpoints:  # by then the NaN has spread to the actor, which the message names first
        assert "at step 200 (after its evaluation)" in error and "values in actor.mu.0.weight" in error
        return
    assert "at step 150 (before saving its checkpoint)" in error and "values in critic.qf0.0.weight." in error
    folder = job.checkpoint_path(checkpoints)
    assert read_state(folder, job)["num_timesteps"] == 149, "the checkpoint saved before the NaN stays"
    saved = TD3.load(folder / "model.zip")
    assert all(th.isfinite(tensor).all() for tensor in saved.policy.state_dict().values())
