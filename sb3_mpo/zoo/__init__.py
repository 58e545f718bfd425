"""
RL Zoo (rl_zoo3) integration of MPO: the shipped hyperparameter file, the Optuna sampler, and the
``sb3-mpo-zoo`` / ``python -m sb3_mpo.zoo`` command that runs rl_zoo3's own entry points with MPO registered.

rl_zoo3 has no plugin mechanism: like sbx, :func:`register` adds MPO to its registries before the entry points run.
Needs the ``zoo`` extra: ``pip install "sb3-mpo[zoo]"``.
"""

from sb3_mpo.zoo.registration import ALGO_NAME, HYPERPARAMS_PATH, register

__all__ = ["ALGO_NAME", "HYPERPARAMS_PATH", "register"]
