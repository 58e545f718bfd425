"""
Exploration for MPO and other SB3 off-policy algorithms: State Marginal Matching (:mod:`sb3_mpo.exploration.smm`),
an exploration environment (``sb3_mpo/PointRooms-v0``, registered on import) and its coverage metrics.
"""

import gymnasium as gym

from sb3_mpo.exploration.envs import PointRoomsEnv
from sb3_mpo.exploration.metrics import exploration_metrics
from sb3_mpo.exploration.smm import (
    SMM,
    HistoricalAveragePolicy,
    PolicySnapshots,
    SkillWrapper,
    SMMReplayBuffer,
    smm_reward,
)

__all__ = [
    "SMM",
    "HistoricalAveragePolicy",
    "PointRoomsEnv",
    "PolicySnapshots",
    "SMMReplayBuffer",
    "SkillWrapper",
    "exploration_metrics",
    "smm_reward",
]

if "sb3_mpo/PointRooms-v0" not in gym.registry:
    gym.register("sb3_mpo/PointRooms-v0", entry_point="sb3_mpo.exploration.envs:PointRoomsEnv")
