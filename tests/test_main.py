"""The README's main job, ``python -m sb3_mpo``, prints its progress, the final evaluation and what the score means."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch as th
from torch import nn

from sb3_mpo.__main__ import build_model, build_parser
from sb3_mpo.common.hyperparams import load_hyperparams
from sb3_mpo.mpo.torsos import SharedBatchRenorm


def readme_main_job() -> list[str]:
    """The arguments of the README's main job, as written in its first set-up command."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (command,) = re.findall(r"```bash\npip install torch==[^\n]*&& (python -m sb3_mpo [^\n]*)\n```", readme)
    return command.split()[3:]


def test_main_job_prints_progress_and_final_evaluation(tmp_path):
    """The README's main job as written (Pendulum-v1, 20k steps), its budget shortened to 600 steps."""
    arguments = readme_main_job()
    assert arguments == ["--env", "Pendulum-v1", "--steps", "20000"]
    arguments[arguments.index("--steps") + 1] = "600"
    command = [sys.executable, "-m", "sb3_mpo", *arguments, "--eval-freq", "200", "--eval-episodes", "2"]
    out = subprocess.run([*command, "--save", str(tmp_path / "model")], capture_output=True, text=True, check=True).stdout
    progress = re.findall(r"^\s+(\d+) steps\s+\d+:\d\d\s+evaluation return\s+(-?\d+\.\d)$", out, flags=re.MULTILINE)
    assert [int(step) for step, _ in progress] == [200, 400, 600]
    assert re.search(r"mean return -?\d+\.\d \+/- \d+\.\d over 2 deterministic evaluation episodes", out)
    assert "-200 or above is solved" in out
    assert (tmp_path / "model.zip").exists()


@pytest.mark.parametrize("flags, steps", [([], 50_000), (["--steps", "700"], 700)])
def test_main_job_trains_an_entry_for_its_budget_with_one_thread_unless_told(monkeypatch, flags, steps):
    """Without --steps the main job trains for the entry's n_timesteps, as rl_zoo3's train does, with its settings."""
    args = build_parser().parse_args(["--env", "CartPole-v1", *flags])
    before = th.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        model = build_model(args)
        assert args.steps == steps and th.get_num_threads() == 1
        entry = load_hyperparams("CartPole-v1")
        assert (model.learning_rate, model.q_target, model.n_steps) == (entry["learning_rate"], "n_step", entry["n_steps"])
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        build_model(args)
        assert th.get_num_threads() == 2
    finally:
        th.set_num_threads(before)


def readme_python_example() -> str:
    """The README's Python example, as written there."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (example,) = re.findall(r"## Example\n\n```python\n(.*?)```", readme, flags=re.DOTALL)
    return example


def test_readme_example_runs_after_the_main_install(tmp_path):
    """The README's example as written, with a 300-step budget; it needs nothing beyond `pip install -e .`."""
    example = readme_python_example()
    assert "total_timesteps=20_000" in example and "progress_bar=True)" not in example
    script = tmp_path / "example.py"
    script.write_text(example.replace("total_timesteps=20_000", "total_timesteps=300"))
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert re.search(r"mean return over 10 episodes: -?\d+\.\d \+/- \d+\.\d", out)


def test_readme_mujoco_entry_builds_acmes_torso_and_crossqs_critic_and_optimiser():
    """The README's line for MuJoCo-like tasks, as written there: Acme's torso in both networks, BatchRenorm layers in
    the critic (CrossQ's, read without target network), CrossQ's optimiser for both, and the target pass in float32."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (snippet,) = re.findall(r"the entry's settings:\n\n```python\n(.*?)```", readme, flags=re.DOTALL)
    namespace: dict = {}
    exec(snippet, namespace)
    model = namespace["model"]
    assert model.target_precision == "float32" and model.policy.batch_renorm
    for network in (model.actor.latent_pi, model.critic.q_networks[0]):
        assert any(isinstance(module, nn.LayerNorm) for module in network.modules())
        assert any(isinstance(module, nn.ELU) for module in network.modules())
    assert any(isinstance(module, SharedBatchRenorm) for module in model.critic.q_networks[0].modules())
    assert not any(isinstance(module, SharedBatchRenorm) for module in model.actor.modules())
    for optimizer in (model.actor.optimizer, model.critic.optimizer):
        assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["betas"] == (0.5, 0.999)


def test_main_job_refuses_an_entry_whose_environment_rl_zoo_would_wrap(monkeypatch):
    """The shipped Atari entry stacks AtariWrapper's frames, which this job's plain environment would not: it says so."""
    import sb3_mpo.__main__ as main_job

    entries = {"CartPole-v1": {"policy": "CnnPolicy", "frame_stack": 4, "n_timesteps": 100, "n_envs": 1}}
    monkeypatch.setattr(main_job, "load_entry", lambda env_id: dict(entries[env_id]))
    args = build_parser().parse_args(["--env", "CartPole-v1", "--steps", "10"])
    with pytest.raises(ValueError, match=r"^env='CartPole-v1': its entry .* sets \{'frame_stack': 4\}.*sb3_mpo\.zoo train"):
        build_model(args)
    entries["CartPole-v1"] = {"policy": "MlpPolicy", "n_timesteps": 100, "normalize": True}  # True == 1, still refused
    with pytest.raises(ValueError, match=r"sets \{'normalize': True\}"):
        build_model(args)
    entries["CartPole-v1"] = {"policy": "MlpPolicy", "n_timesteps": 100, "env_kwargs": {"sutton_barto_reward": True}}
    with pytest.raises(ValueError, match=r"sets \{'env_kwargs': \{'sutton_barto_reward': True\}\}"):
        build_model(args)
    entries["CartPole-v1"] = {"policy": "MlpPolicy", "n_timesteps": 100, "n_envs": 1, "normalize": False, "env_kwargs": {}}
    assert build_model(args).num_timesteps == 0  # one environment, no normalisation: nothing left out


@pytest.mark.parametrize("flag, value", [("--steps", "-5"), ("--eval-freq", "0"), ("--eval-episodes", "0"), ("--steps", "x")])
def test_main_job_refuses_counts_below_one_before_training(flag, value, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([flag, value])
    assert f"argument {flag}: expected a positive integer, got '{value}'" in capsys.readouterr().err


def test_benchmark_report_names_the_install_it_needs(monkeypatch, capsys):
    """Without rliable, `report` stops before writing anything and names the extra to install."""
    from benchmarks import cli

    monkeypatch.setattr(cli, "missing_modules", lambda names: ["rliable"])
    assert cli.main(["report", "tiny"]) == 2
    assert 'pip install -e ".[benchmarks]"' in capsys.readouterr().err


def readme_commands() -> list[str]:
    """The README's commands of RL Zoo and the benchmarks, as written there (the block after the example)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = re.findall(r"each after its install:\n\n```bash\n(.*?)```", readme, flags=re.DOTALL)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("python -m")]


def test_readme_commands_run_as_written(tmp_path):
    """Each command of the README, with its budget shortened: train, enjoy what it trained, the tiny suite, report."""
    shorten = {
        "python -m sb3_mpo.zoo train": ["-n", "300", "--eval-freq", "-1", "--hyperparams", "learning_starts:100"],
        "python -m sb3_mpo.zoo enjoy": ["-n", "50", "--no-render"],
        "python -m benchmarks run tiny": ["--results", str(tmp_path / "results"), "--workers", "1"],
        "python -m benchmarks report tiny": [
            *("--results", str(tmp_path / "results")),
            *("--out", str(tmp_path / "tiny.md"), "--figures", str(tmp_path / "figures")),
        ],
        "python -m benchmarks report quick": ["--out", str(tmp_path / "quick.md")],
    }
    commands = readme_commands()
    assert len(commands) == 6, commands  # train, enjoy, run tiny, report tiny, run quick, report quick
    repository = Path(__file__).resolve().parents[1]
    for command in commands:
        if command == "python -m benchmarks run quick":  # hours: only check that the suite loads and what it would run
            command = "python -m benchmarks status quick"
        extra = next((arguments for prefix, arguments in shorten.items() if command.startswith(prefix)), [])
        words = command.split()
        # The zoo writes logs/ where it runs; the benchmarks find their suites from the repository root
        cwd = repository if words[2].startswith("benchmarks") else tmp_path
        done = subprocess.run([sys.executable, *words[1:], *extra], cwd=cwd, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert (tmp_path / "logs" / "mpo" / "Pendulum-v1_1" / "Pendulum-v1.zip").is_file()
    assert (tmp_path / "quick.md").read_text().startswith("# Benchmark suite `quick`")
    assert (tmp_path / "tiny.md").read_text().startswith("# Benchmark suite `tiny`")
    assert len(list((tmp_path / "results" / "tiny").rglob("*.json"))) == 4
