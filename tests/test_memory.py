"""The benchmark runner hands the C heap's free memory back to the system between rollouts."""

import platform

import pytest
from stable_baselines3 import A2C

from sb3_mpo.benchmark import memory
from sb3_mpo.benchmark.memory import ReleaseFreeMemory, glibc_malloc_trim
from sb3_mpo.benchmark.runner import run_job
from sb3_mpo.benchmark.suite import Job


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found_and_callable():
    trim = glibc_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1), "malloc_trim returns 1 when it released memory, else 0"


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
