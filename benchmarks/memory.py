"""
Keep a long benchmark run's memory bounded and its updates fast, whatever the algorithm.

glibc keeps the blocks that large tensors free inside the process heap: after the first large block is returned, its
dynamic threshold sends blocks of that size to the heap instead of ``mmap``, and the heap's free pages are not given
back, so a worker with large loss tensors (QR-DQN with RL Zoo's LunarLander-v3 settings: a (128, 170, 170) tensor per
loss) grows by tens of MB per minute. :class:`ReleaseFreeMemory` trims the heap between rollouts, at most once per
``interval_seconds``. The default thresholds also cost time: glibc shrinks the heap's top whenever more than twice the
dynamic threshold lies free there, so each update returns its loss tensors to the system and faults fresh pages in for
the next one; :func:`keep_freed_blocks_in_heap` fixes the thresholds (blocks up to 32 MiB come from the heap). The
measurements are in ``benchmarks/results/allocator/`` (``python -m benchmarks.allocator``).

MPO's ``learn`` applies :func:`~sb3_mpo.common.allocator.keep_freed_blocks_in_heap` itself; the runner applies it to
every algorithm's worker and passes :class:`ReleaseFreeMemory` to ``learn``.
"""

import time

from stable_baselines3.common.callbacks import BaseCallback

from sb3_mpo.common.allocator import glibc_malloc_trim, keep_freed_blocks_in_heap

__all__ = ["ReleaseFreeMemory", "glibc_malloc_trim", "keep_freed_blocks_in_heap"]


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
