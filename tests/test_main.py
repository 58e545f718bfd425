"""The README's main job, ``python -m sb3_mpo``, prints its progress, the final evaluation and what the score means."""

import re
import subprocess
import sys
from pathlib import Path


def test_main_job_prints_progress_and_final_evaluation(tmp_path):
    command = [sys.executable, "-m", "sb3_mpo", "--steps", "600", "--eval-freq", "200", "--eval-episodes", "2"]
    out = subprocess.run([*command, "--save", str(tmp_path / "model")], capture_output=True, text=True, check=True).stdout
    progress = re.findall(r"^\s+(\d+) steps\s+\d+:\d\d\s+evaluation return\s+(-?\d+\.\d)$", out, flags=re.MULTILINE)
    assert [int(step) for step, _ in progress] == [200, 400, 600]
    assert re.search(r"mean return -?\d+\.\d \+/- \d+\.\d over 2 deterministic evaluation episodes", out)
    assert "-200 or above is solved" in out
    assert (tmp_path / "model.zip").exists()


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


def test_benchmark_report_names_the_install_it_needs(monkeypatch, capsys):
    """Without rliable, `report` stops before writing anything and names the extra to install."""
    from benchmarks import cli

    monkeypatch.setattr(cli, "missing_modules", lambda names: ["rliable"])
    assert cli.main(["report", "tiny"]) == 2
    assert 'pip install -e ".[benchmarks]"' in capsys.readouterr().err
