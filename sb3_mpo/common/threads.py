"""How many torch threads the command-line entry points use."""

import os
import re
from collections.abc import Mapping

import torch as th


def set_torch_threads(environ: Mapping[str, str] = os.environ) -> int:
    """
    Run with one torch thread unless ``OMP_NUM_THREADS`` says otherwise: MPO's networks are small, and on a 2-core
    machine with another process running, 1,000 RL Zoo training steps of MPO took 27-42 s with one thread against
    141-150 s with torch's default (one per core). ``python -m sb3_mpo``, ``torchrun -m sb3_mpo.distributed`` and
    ``python -m sb3_mpo.zoo`` call it before they build anything.

    OpenMP's list form (``"4,2"``: threads per nesting level) sets the first level's; an empty value is unset.

    :param environ: The process environment
    :return: The number of threads set
    :raises ValueError: where ``OMP_NUM_THREADS`` is neither empty nor a positive integer (or a list of them)
    """
    value = environ.get("OMP_NUM_THREADS", "").strip()
    levels = [level.strip() for level in value.split(",")]
    first = levels[0]
    if value and not all(re.fullmatch(r"[0-9]+", level) and int(level) > 0 for level in levels):
        raise ValueError(
            f"OMP_NUM_THREADS={value!r} is invalid, expected a positive integer (or OpenMP's list, e.g. '4,2'), or unset"
        )
    threads = int(first) if value else 1
    th.set_num_threads(threads)
    return threads
