"""The README's main job, ``python -m sb3_mpo``, prints its progress, the final evaluation and what the score means."""

import re
import subprocess
import sys


def test_main_job_prints_progress_and_final_evaluation(tmp_path):
    command = [sys.executable, "-m", "sb3_mpo", "--steps", "600", "--eval-freq", "200", "--eval-episodes", "2"]
    out = subprocess.run([*command, "--save", str(tmp_path / "model")], capture_output=True, text=True, check=True).stdout
    progress = re.findall(r"^\s+(\d+) steps\s+\d+:\d\d\s+evaluation return\s+(-?\d+\.\d)$", out, flags=re.MULTILINE)
    assert [int(step) for step, _ in progress] == [200, 400, 600]
    assert re.search(r"mean return -?\d+\.\d \+/- \d+\.\d over 2 deterministic evaluation episodes", out)
    assert "-200 or above is solved" in out
    assert (tmp_path / "model.zip").exists()
