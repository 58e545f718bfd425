"""
A small, fast exploration task (pure NumPy): a point mass in four rooms joined by narrow doorways, with a fixed start
and no extrinsic reward. Registered with gymnasium as ``sb3_mpo/PointRooms-v0`` when :mod:`sb3_mpo.exploration` is
imported.

::

    1 +---------+---------+
      |         |         |
      |   (2)   D   (3)   |
      |         |         |
      +----D----+----D----+ 0.5
      |         |         |
      |   (0)   D   (1)   |
      |  S      |         |
    0 +---------+---------+
      0        0.5        1

Walls are the lines x = 0.5 and y = 0.5; each of their four halves has one doorway D of width ``door_width``. The agent
starts at (0.15, 0.15) in room 0 and moves by ``max_step`` times its action (a velocity in [-1, 1]²) per step; a move
that would cross a wall outside a doorway stops at the wall.
"""

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_mpo.common.checks import is_finite_number, is_integer

#: Centre of each doorway along its wall, for the four wall halves
DOOR_CENTRES = {"vertical_low": 0.25, "vertical_high": 0.75, "horizontal_left": 0.25, "horizontal_right": 0.75}


def room_of(positions: np.ndarray) -> np.ndarray:
    """
    :param positions: Points in the unit square, shape (n, 2)
    :return: Their room index (0: bottom left, 1: bottom right, 2: top left, 3: top right), shape (n,)
    """
    return (positions[:, 0] >= 0.5).astype(int) + 2 * (positions[:, 1] >= 0.5).astype(int)


class PointRoomsEnv(gym.Env):
    """
    Point mass in four rooms (see the module docstring). Observation: the position (x, y) in [0, 1]²; action: a
    velocity in [-1, 1]²; reward: always 0 (exploration only); episodes are truncated after ``max_episode_steps``.

    :param max_step: Largest displacement per step along each axis
    :param door_width: Width of each doorway
    :param max_episode_steps: Episode length (a truncation, not a termination)
    """

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium's own class attribute)
    start = np.array([0.15, 0.15])

    def __init__(self, max_step: float = 0.05, door_width: float = 0.1, max_episode_steps: int = 100):
        if not 0 < door_width < 0.5:
            raise ValueError(f"PointRoomsEnv: door_width={door_width!r} is invalid, expected a number in (0, 0.5)")
        if not (is_finite_number(max_step) and 0 < max_step <= 1):
            raise ValueError(f"PointRoomsEnv: max_step={max_step!r} is invalid, expected a number in (0, 1]")
        if not (is_integer(max_episode_steps) and max_episode_steps >= 1):
            raise ValueError(f"PointRoomsEnv: max_episode_steps={max_episode_steps!r} is invalid, expected an integer >= 1")
        self.max_step = max_step
        self.door_width = door_width
        self.max_episode_steps = max_episode_steps
        self.observation_space = spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.position = self.start.copy()
        self.n_steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.position = self.start.copy()
        self.n_steps = 0
        return self.position.astype(np.float32), {}

    def _in_door(self, crossing: float, low_centre: float, high_centre: float) -> bool:
        """Whether a wall is crossed at coordinate ``crossing`` inside one of its two doorways."""
        half = self.door_width / 2
        centre = low_centre if crossing < 0.5 else high_centre
        return abs(crossing - centre) <= half

    def move(self, position: np.ndarray, action: np.ndarray) -> np.ndarray:
        """
        :param position: Current position
        :param action: Velocity in [-1, 1]²
        :return: The next position: the wall stops a move that crosses it outside a doorway
        """
        target = np.clip(position + self.max_step * np.clip(action, -1.0, 1.0), 0.0, 1.0)
        walls = ((0, ("vertical_low", "vertical_high")), (1, ("horizontal_left", "horizontal_right")))
        for axis, (low_door, high_door) in walls:
            before, after = position[axis], target[axis]
            if (before >= 0.5) != (after >= 0.5):  # the move changes sides (the wall's line belongs to the upper side)
                fraction = (0.5 - before) / (after - before)
                crossing = position[1 - axis] + fraction * (target[1 - axis] - position[1 - axis])
                if not self._in_door(crossing, DOOR_CENTRES[low_door], DOOR_CENTRES[high_door]):
                    target[axis] = 0.5 - 1e-6 if before < 0.5 else 0.5 + 1e-6
        return target

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.position = self.move(self.position, np.asarray(action, dtype=np.float64))
        self.n_steps += 1
        return self.position.astype(np.float32), 0.0, False, self.n_steps >= self.max_episode_steps, {}
