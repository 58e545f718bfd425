"""The benchmark runner hands the C heap's free memory back to the system between rollouts."""

import platform
import subprocess
import sys

import pytest
from stable_baselines3 import A2C

from benchmarks import memory
from benchmarks.allocator import measure
from benchmarks.memory import ReleaseFreeMemory, glibc_malloc_trim, keep_freed_blocks_in_heap
from benchmarks.suite import Job
from benchmarks.training import run_job
from sb3_mpo import MPO
from sb3_mpo.common import allocator
from sb3_mpo.mpo import mpo as mpo_module


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found_and_callable():
    trim = glibc_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1), "malloc_trim returns 1 when it released memory, else 0"


# Run in a fresh interpreter: the settings are process-wide. mallinfo2 (glibc >= 2.33) reports the heap's size (arena)
# and the number of blocks in their own mmap (hblks).
MALLINFO = """
import ctypes

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
"""
HEAP_PROBE = MALLINFO + """
from benchmarks.memory import keep_freed_blocks_in_heap
assert keep_freed_blocks_in_heap()
mmapped = libc.mallinfo2().hblks
blocks = [libc.malloc(16 << 20) for _ in range(3)]  # like an update's loss tensors
in_heap = libc.mallinfo2().hblks == mmapped
heap_with_blocks = libc.mallinfo2().arena
for block in reversed(blocks):
    libc.free(block)
heap_after_free = libc.mallinfo2().arena
big = libc.malloc(64 << 20)
print(in_heap, heap_after_free >= heap_with_blocks >= 48 << 20, libc.mallinfo2().hblks == mmapped + 1)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_blocks_in_heap_serves_large_tensors_from_a_heap_that_free_does_not_shrink():
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, check=True).stdout.split()
    in_heap, kept_after_free, larger_block_mmapped = out
    assert in_heap == "True", "16 MiB blocks come from the heap, not from their own mmap"
    assert kept_after_free == "True", "freeing them leaves the heap's top in place (no brk shrink, no fresh page faults)"
    assert larger_block_mmapped == "True", "a block above the 32 MiB threshold still gets its own mmap"


def test_keep_freed_blocks_in_heap_refuses_quietly_without_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "glibc_malloc_trim", lambda: None)
    assert keep_freed_blocks_in_heap() is False


@pytest.mark.parametrize("interval_seconds, expected", [(0.0, 10), (3600.0, 0)])
def test_release_free_memory_trims_at_rollout_starts_once_the_interval_has_passed(interval_seconds, expected):
    callback = ReleaseFreeMemory(interval_seconds)
    calls: list[int] = []
    callback.trim = lambda pad: calls.append(pad) or 0
    A2C("MlpPolicy", "CartPole-v1", n_steps=5).learn(50, callback=callback)  # 10 rollouts of 5 steps
    assert calls == [0] * expected and callback.n_trims == expected


def test_benchmark_runs_use_it(monkeypatch):
    rollouts: list[int] = []
    monkeypatch.setattr(memory.ReleaseFreeMemory, "_on_rollout_start", lambda self: rollouts.append(self.model.num_timesteps))
    hyperparams = {"learning_starts": 20, "batch_size": 8, "n_action_samples": 2, "policy_kwargs": "dict(net_arch=[8])"}
    run_job(Job("memory", "mpo", "Pendulum-v1", 0, 40, 40, 1, hyperparams=hyperparams))
    assert rollouts == list(range(40)), "one rollout per step (train_freq=1)"


# After MPO's learn, is a 16 MiB block served from the heap (True) or from its own mmap (False)?
MPO_PROBE = MALLINFO + """
import sys
from sb3_mpo import MPO

MPO.keep_freed_memory_in_heap = sys.argv[1] == "on"
small = dict(learning_starts=5, batch_size=8, n_action_samples=2, policy_kwargs=dict(net_arch=[8]))
MPO("MlpPolicy", "Pendulum-v1", **small).learn(10)
mmapped = libc.mallinfo2().hblks
libc.malloc(16 << 20)
print(libc.mallinfo2().hblks == mmapped)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("setting, in_heap", [("on", "True"), ("off", "False")])
def test_mpo_learn_keeps_freed_blocks_in_heap_unless_switched_off(setting, in_heap):
    out = subprocess.run([sys.executable, "-c", MPO_PROBE, setting], capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == in_heap


def test_the_allocator_comparison_measures_mpo_with_glibcs_own_behaviour_in_its_default_arm(monkeypatch):
    """MPO keeps freed blocks in its heap by itself when it learns; the comparison's default arm switches that off."""
    calls: list[dict] = []
    monkeypatch.setattr(MPO, "keep_freed_memory_in_heap", True)  # restored after the test: the arm switches it off
    monkeypatch.setattr(mpo_module, "keep_freed_blocks_in_heap", lambda **kwargs: calls.append(kwargs))
    figures = measure("mpo", "Pendulum-v1", threads=1, updates=2, setting="glibc_default")
    assert calls == [] and figures["gradient_steps_per_second"] > 0
