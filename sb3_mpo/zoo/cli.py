"""
``sb3-mpo-zoo COMMAND [FLAGS]`` (or ``python -m sb3_mpo.zoo COMMAND [FLAGS]``): rl_zoo3's own entry points, run with
MPO registered. Each command parses its flags itself, exactly as ``python -m rl_zoo3.COMMAND`` would, so every rl_zoo3
flag works; ``--algo mpo`` reads sb3-mpo's hyperparameter file unless ``--conf-file`` is given, and every other
``--algo`` behaves as in rl_zoo3.
"""

import argparse
import importlib.util
import runpy
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from sb3_mpo.common.threads import set_torch_threads
from sb3_mpo.zoo.registration import register


@contextmanager
def _replaced(module: ModuleType, name: str, value: Any) -> Iterator[None]:
    """Replace ``module.name`` by ``value`` for the duration of the block."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def train() -> None:
    """rl_zoo3's ``train``, with MPO's experiment manager (shipped hyperparameters, fallback, checks)."""
    import rl_zoo3.train

    from sb3_mpo.zoo.exp_manager import MPOExperimentManager

    with _replaced(rl_zoo3.train, "ExperimentManager", MPOExperimentManager):
        rl_zoo3.train.train()


def enjoy() -> None:
    """rl_zoo3's ``enjoy``: load a trained agent and run it."""
    from rl_zoo3.enjoy import enjoy as rl_zoo3_enjoy

    rl_zoo3_enjoy()


def record_video() -> None:
    """rl_zoo3's ``record_video`` script (a ``__main__`` block, hence run as a module)."""
    runpy.run_module("rl_zoo3.record_video", run_name="__main__")


def _run_plot_script(name: str) -> None:
    """
    Run ``rl_zoo3/plots/<name>.py``'s function ``<name>`` without importing the ``rl_zoo3.plots`` package, whose
    ``__init__`` imports every plot script and with them rliable (needed by ``plot_from_file`` only), so that a broken
    rliable install (e.g. its ``arch`` dependency under pandas 3) does not take ``plot_train`` and ``all_plots`` down.
    """
    spec = importlib.util.find_spec("rl_zoo3")
    assert spec is not None and spec.origin is not None, "rl_zoo3 is not installed"
    script = Path(spec.origin).parent / "plots" / f"{name}.py"
    # Under a name of its own: under its module's, the half-run script would stand in sys.modules for the module that
    # rl_zoo3.plots' __init__ imports when the script imports from that package (plot_from_file does)
    namespace = runpy.run_path(str(script), run_name=f"sb3_mpo_zoo_{name}")
    namespace[name]()


def plot_train() -> None:
    """rl_zoo3's ``plot_train``: training reward, success or episode length of one algorithm on some environments."""
    _run_plot_script("plot_train")


def plot_from_file() -> None:
    """rl_zoo3's ``plot_from_file``: plots from the file written by ``all_plots -o`` (needs rliable)."""
    _run_plot_script("plot_from_file")


def all_plots() -> None:
    """rl_zoo3's ``all_plots``: evaluation curves and a results table of several algorithms and log folders."""
    _run_plot_script("all_plots")


#: Command name -> entry point; each reads its flags from ``sys.argv``
COMMANDS: dict[str, Callable[[], None]] = {
    "train": train,
    "enjoy": enjoy,
    "record_video": record_video,
    "plot_train": plot_train,
    "plot_from_file": plot_from_file,
    "all_plots": all_plots,
}


@contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    original = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = original


def main(argv: Sequence[str] | None = None, prog: str = "sb3-mpo-zoo") -> None:
    """
    Run one rl_zoo3 command with MPO registered.

    :param argv: The command and its rl_zoo3 flags, e.g. ``["train", "--algo", "mpo", "--env", "Pendulum-v1"]``
        (default: ``sys.argv[1:]``)
    :param prog: Program name shown in usage and help messages
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run an rl_zoo3 command (train, enjoy, record_video, plots) with MPO registered as --algo mpo. "
        "Every rl_zoo3 flag works; --algo mpo reads sb3-mpo's hyperparameter file unless --conf-file is given.",
        epilog=f"Flags of a command: {prog} COMMAND --help",
    )
    parser.add_argument("command", choices=list(COMMANDS), help="rl_zoo3 entry point to run")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="flags of that entry point, as rl_zoo3 documents them")
    parsed = parser.parse_args(sys.argv[1:] if argv is None else list(argv))

    register()
    set_torch_threads()
    with _argv([f"{prog} {parsed.command}", *parsed.flags]):
        COMMANDS[parsed.command]()
