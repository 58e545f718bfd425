"""
Keep a long benchmark run's memory bounded.

glibc keeps the memory that large tensors free inside the process heap: after the first large block is returned, its
dynamic threshold sends blocks of that size to the heap instead of ``mmap``, and the heap's free pages are not given
back. A QR-DQN run with RL Zoo's LunarLander-v3 settings (a (128, 170, 170) pairwise tensor per loss) grew by about
60 MB per minute of training this way, 5 GB by 100k steps, so that two 300k-step runs would not fit in 24 GiB.
Calling ``malloc_trim(0)`` on that process (1.25 GB resident) brought it to 0.71 GB. Fixing the threshold instead
(``MALLOC_MMAP_THRESHOLD_=1048576``) held it at 0.5 GB but doubled the cost of the loss, as every tensor became a fresh
``mmap``. :class:`ReleaseFreeMemory` trims the heap now and then, between rollouts.
"""

import ctypes
import sys
import time
from collections.abc import Callable

from stable_baselines3.common.callbacks import BaseCallback


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """:return: glibc's ``malloc_trim``, or None where the C library is not glibc (macOS, Windows, musl)"""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


class ReleaseFreeMemory(BaseCallback):
    """
    Give the C heap's free pages back to the system (glibc's ``malloc_trim``) at the start of a rollout, at most once
    every ``interval_seconds``; does nothing where the C library is not glibc.

    :param interval_seconds: Minimum wall-clock between two trims
    """

    def __init__(self, interval_seconds: float = 60.0):
        super().__init__()
        self.interval_seconds = interval_seconds
        self.trim = glibc_malloc_trim()
        self.n_trims = 0
        self.last_trim = time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.trim is not None and time.perf_counter() - self.last_trim >= self.interval_seconds:
            self.trim(0)
            self.n_trims += 1
            self.last_trim = time.perf_counter()
