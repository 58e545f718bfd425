"""
Allocated memory of the trajectory-segment replay buffer against SB3's ReplayBuffer, for the spaces of HalfCheetah-v5.

The arrays are allocated with ``np.zeros`` (pages are only committed when written), so this reads their ``nbytes``
without filling them and runs in a second. Usage::

    python -m benchmarks.buffer_memory [--env HalfCheetah-v5] [--buffer-size 1000000] [--n-envs 1]
"""

import argparse
import platform
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.buffers import ReplayBuffer

from benchmarks.stamp import git_commit
from sb3_mpo.common.buffers import SegmentReplayBuffer

TARGET_RATIO = 1.15


def allocated_bytes(buffer: Any) -> int:
    """
    :param buffer: A replay buffer
    :return: The sum of ``nbytes`` of every numpy array it holds (directly or in a dict of arrays)
    """
    total = 0
    for value in vars(buffer).values():
        arrays = value.values() if isinstance(value, dict) else [value]
        total += sum(array.nbytes for array in arrays if isinstance(array, np.ndarray))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--buffer-size", type=int, default=1_000_000)
    parser.add_argument("--n-envs", type=int, default=1)
    args = parser.parse_args()

    env = gym.make(args.env)
    observation_space, action_space = env.observation_space, env.action_space
    env.close()
    print(f"{args.env}: observations {observation_space}, actions {action_space}")
    print(f"buffer_size={args.buffer_size:_}, n_envs={args.n_envs}, commit {git_commit()}, {platform.platform()}")

    # Both variants of each buffer; optimize_memory_usage needs handle_timeout_termination=False in SB3 and here
    variants = {"default": {}, "optimize_memory_usage": {"optimize_memory_usage": True, "handle_timeout_termination": False}}
    ratios = {}
    for name, kwargs in variants.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SB3's "not enough memory" warning: nothing is committed here
            sb3 = ReplayBuffer(args.buffer_size, observation_space, action_space, "cpu", args.n_envs, **kwargs)
            ours = SegmentReplayBuffer(args.buffer_size, observation_space, action_space, "cpu", args.n_envs, **kwargs)
        sb3_bytes, our_bytes = allocated_bytes(sb3), allocated_bytes(ours)
        ratios[name] = our_bytes / sb3_bytes
        print(f"\n[{name}]")
        print(f"  SB3 ReplayBuffer     {sb3_bytes:>15,d} bytes  ({sb3_bytes / 1e6:8.1f} MB)")
        print(f"  SegmentReplayBuffer  {our_bytes:>15,d} bytes  ({our_bytes / 1e6:8.1f} MB)")
        print(f"  ratio                {ratios[name]:.4f}  (target <= {TARGET_RATIO})")
    verdict = "PASS" if ratios["default"] <= TARGET_RATIO else "FAIL"
    print(f"\n{verdict}: default ratio {ratios['default']:.4f} vs target {TARGET_RATIO}")


if __name__ == "__main__":
    main()
