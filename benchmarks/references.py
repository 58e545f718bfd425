"""
Fixed reference returns a suite may normalise its aggregate with (``normalisation:`` in its file) instead of the worst
and best run on its page. With them a page's normalised scores do not depend on which algorithms the page shows, and
pages of the same tasks at different budgets (``mujoco_dev`` at 100k steps, ``mujoco_300k``) share one scale.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreReference:
    """Two returns per task that a normalised score of 0 and of 1 stand for."""

    #: The name a suite file gives (``normalisation: d4rl``)
    name: str
    #: What 0 and 1 stand for and where the numbers come from, completing "final returns normalised by ..."
    description: str
    #: Task (an environment id without its version: ``HalfCheetah``) -> (the return scored 0, the return scored 1)
    scores: dict[str, tuple[float, float]]

    @staticmethod
    def task(env_id: str) -> str:
        """:return: The environment's task: its id without namespace and version (``HalfCheetah-v5`` -> ``HalfCheetah``)"""
        return env_id.split("/")[-1].rsplit("-v", 1)[0]

    def covers(self, env_id: str) -> bool:
        """:return: Whether this reference has returns for the environment's task"""
        return self.task(env_id) in self.scores

    def range_of(self, env_id: str) -> tuple[float, float]:
        """:return: The returns scored 0 and 1 on the environment (a ValueError where this reference has none)"""
        if not self.covers(env_id):
            raise ValueError(f"{self.name} has no reference returns for {env_id} (it scores {sorted(self.scores)})")
        return self.scores[self.task(env_id)]


#: D4RL's reference returns (Fu et al. 2020, "D4RL: Datasets for Deep Data-Driven Reinforcement Learning", arXiv
#: 2004.07219; the REF_MIN_SCORE and REF_MAX_SCORE of its gym_mujoco datasets), measured on the v2 environments. The
#: v4 and v5 versions of these three tasks keep their rewards (forward velocity, control cost, Hopper's and Walker2d's
#: healthy bonus); Ant's changed (its contact cost), so it is left out.
D4RL = ScoreReference(
    name="d4rl",
    description="D4RL's reference returns (Fu et al. 2020): 0 is a uniformly random policy's return, 1 an expert SAC policy's",
    scores={
        "HalfCheetah": (-280.178953, 12135.0),
        "Hopper": (-20.272305, 3234.3),
        "Walker2d": (1.629008, 4592.3),
    },
)

#: The references a suite file can name
REFERENCES = {reference.name: reference for reference in (D4RL,)}
