"""What a stored measurement says about where it was made: the commit, the machine and the libraries' versions."""

import contextlib
import os
import platform
import subprocess
from pathlib import Path

#: The repository whose commit results are stamped with
REPOSITORY = Path(__file__).resolve().parents[1]


#: What runs write (result files and the pages generated from them): changing them does not change what a run computes
OUTPUTS = ("benchmarks/results", "docs/results")


def _git(*args: str) -> str:
    """:return: The output of ``git ARGS`` in the repository, stripped; raises OSError or CalledProcessError"""
    return subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True, check=True).stdout.strip()


def git_commit() -> str:
    """
    The checkout's commit (``-dirty`` when a tracked file other than the stored results and their pages has uncommitted
    changes, so that runs writing their results beside the code keep a clean stamp), or ``"unknown"`` outside a git
    checkout.
    """
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":(exclude){path}" for path in OUTPUTS))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def commit_time(commit: str) -> int:
    """
    :param commit: A stamp written by :func:`git_commit` (``-dirty`` allowed)
    :return: The commit's time (Unix seconds), or 0 where this checkout does not hold it (a shallow clone, "unknown")
    """
    try:
        output = _git("show", "-s", "--format=%ct", commit.removesuffix("-dirty"))
    except (OSError, subprocess.CalledProcessError):
        return 0
    return int(output) if output.isdigit() else 0


#: Installed distributions whose version can change a run's numbers besides the libraries imported below: RL Zoo
#: (wrappers, defaults) and the simulators (a MuJoCo release can change the physics)
OPTIONAL_DISTRIBUTIONS = ("rl_zoo3", "mujoco", "box2d", "ale-py")


def library_versions() -> dict[str, str]:
    """The versions of the libraries a run imports, and of the optional ones that are installed."""
    from importlib import metadata

    import gymnasium
    import sb3_contrib
    import stable_baselines3
    import torch

    import sb3_mpo

    versions = {
        "sb3_mpo": sb3_mpo.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "sb3_contrib": sb3_contrib.__version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "python": platform.python_version(),
    }
    for name in OPTIONAL_DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


#: Where Linux names the processor model
CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """
    :return: The processor's model name (Linux's ``/proc/cpuinfo``: the same seed can train differently, and at another
        speed, on another processor), else what ``platform`` knows (e.g. ``x86_64``)
    """
    with contextlib.suppress(OSError):
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def machine() -> str:
    """:return: The host's name, processor model, core count and operating system, as results record them"""
    return f"{platform.node()} {cpu_model()} {os.cpu_count()} cores {platform.system()}"


def stamp() -> dict[str, str]:
    """What a stored measurement must say about where it was made: the commit, the machine and torch's version."""
    import torch

    return {"commit": git_commit(), "machine": machine(), "torch": torch.__version__}
