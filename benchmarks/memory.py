"""
Keep a long benchmark run's memory bounded.

glibc keeps the memory that large tensors free inside the process heap: after the first large block is returned, its
dynamic threshold sends blocks of that size to the heap instead of ``mmap``, and the heap's free pages are not given
back. A QR-DQN run with RL Zoo's LunarLander-v3 settings (a (128, 170, 170) pairwise tensor per loss) grew by about
60 MB per minute of training this way, 5 GB by 100k steps, so that two 300k-step runs would not fit in 24 GiB.
Calling ``malloc_trim(0)`` on that process (1.25 GB resident) brought it to 0.71 GB. Fixing the threshold instead
(``MALLOC_MMAP_THRESHOLD_=1048576``) held it at 0.5 GB but doubled the cost of the loss, as every tensor became a fresh
``mmap``. :class:`ReleaseFreeMemory` trims the heap now and then, between rollouts.

The default thresholds also cost time: glibc shrinks the heap's top (``brk``) whenever more than twice the dynamic
threshold lies free there, so each update freed its 15 MB loss tensors back to the system and faulted fresh zeroed
pages in for the next one: 184,000 page faults per second, and 23% of the process's CPU time in the kernel, for that
QR-DQN run. :func:`keep_freed_blocks_in_heap` fixes the thresholds (blocks up to 32 MiB from the heap, which is trimmed
only by :class:`ReleaseFreeMemory`): set in that running process (seed 3, two torch threads), the faults fell to
~1,500 per second and its training rate between ten-minute checkpoints rose from 20.4-21.3 env steps/s to a median
of 25.6 over the last eleven, with resident memory at 0.83-0.94 GB and a peak of 1.07 GB. Measured in alternating
fresh processes (``benchmarks/allocator.py``, results in ``benchmarks/results/allocator/``), the fixed thresholds gave
QR-DQN on LunarLander-v3 1.28x the gradient steps per second and MPO on Pendulum-v1 1.13x.

MPO's ``learn`` applies :func:`~sb3_mpo.common.allocator.keep_freed_blocks_in_heap` itself; another algorithm's
training script gets the same by calling it once at start-up and passing :class:`ReleaseFreeMemory` to ``learn``.
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
