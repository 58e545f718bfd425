"""
State Marginal Matching (SMM) exploration: Lee, Eysenbach, Parisotto, Xing, Levine, Salakhutdinov (2019),
"Efficient Exploration via State Marginal Matching", arXiv 1906.05274.

SMM trains a policy whose state marginal ρ_π(s) matches a target p*(s) by maximising the reward
r(s) = log p*(s) − log ρ_π(s) (the paper's SMM objective). With latent skills z ~ p(z), fixed for an episode and given
to the policy (the paper's mixture of policies), the reward becomes r_z(s) = log p*(s) − log q(s|z) + log d(z|s) − log p(z),
where q(s|z) is a density model of the states visited under skill z (a VAE) and d(z|s) a skill discriminator. Both are
fitted to replay, which holds the states of all past policies: that is the historical averaging of the density player
in the paper's fictitious play; :class:`PolicySnapshots` and :class:`HistoricalAveragePolicy` give the policy player's average.

The pieces plug into any SB3 off-policy algorithm (MPO, SAC, TD3, ...); the buffer holds transitions, so MPO trains on
it with 1-step targets (``q_target="n_step"``) instead of its default Retrace segments::

    env = SkillWrapper(gym.make("sb3_mpo/PointRooms-v0"), n_skills=4)
    model = MPO(
        "MlpPolicy", env, q_target="n_step", replay_buffer_class=SMMReplayBuffer, replay_buffer_kwargs=dict(n_skills=4)
    )
    snapshots = PolicySnapshots(snapshot_freq=10_000)
    model.learn(100_000, callback=snapshots)
    mixture = HistoricalAveragePolicy(snapshots.snapshots)   # evaluate_policy(mixture, ...)
"""

import copy
import functools
import importlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import cloudpickle
import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import create_mlp
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import is_vectorized_observation
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn
from torch.nn import functional as F

from sb3_mpo.common.checks import is_finite_number, is_integer

#: log p*(s) of a batch of states, shape (B, state_dim) -> (B,); None is the uniform target (a constant, dropped)
TargetLogProb = Callable[[np.ndarray], np.ndarray]
#: The file of :meth:`PolicySnapshots.save` that lists the snapshots and the schedule
SNAPSHOTS_MANIFEST = "snapshots.json"


def smm_reward(
    log_target: th.Tensor,
    log_density: th.Tensor,
    log_discriminator: th.Tensor,
    log_prior: float,
    target_coef: float = 1.0,
    density_coef: float = 1.0,
    skill_coef: float = 1.0,
) -> th.Tensor:
    """
    The SMM reward with latent skills (the paper's mixture-of-policies objective), each term weighted by its
    coefficient:

    r_z(s) = c_* · log p*(s) − c_q · log q(s|z) + c_d · (log d(z|s) − log p(z))

    The first term pulls the states toward the target, the second rewards states the policy (under skill z) rarely
    visits, the third rewards states from which the skill can be told apart from the others.

    :param log_target: log p*(s), shape (B,)
    :param log_density: log q(s|z), shape (B,)
    :param log_discriminator: log d(z|s), shape (B,)
    :param log_prior: log p(z) (uniform prior: −log n_skills)
    :param target_coef: c_*
    :param density_coef: c_q
    :param skill_coef: c_d
    :return: r_z(s), shape (B,)
    """
    return target_coef * log_target - density_coef * log_density + skill_coef * (log_discriminator - log_prior)


def gaussian_elbo(
    states: th.Tensor, recon_mean: th.Tensor, recon_log_std: th.Tensor, latent_mean: th.Tensor, latent_log_std: th.Tensor
) -> th.Tensor:
    """
    Evidence lower bound of a VAE with a diagonal Gaussian decoder and a standard normal prior (Kingma and Welling
    2014, Eq. (10)): log N(s; μ_dec, σ_dec²) − KL(N(μ_enc, σ_enc²) ‖ N(0, I)), a lower bound of log q(s).

    :param states: s, shape (B, D)
    :param recon_mean: μ_dec, shape (B, D)
    :param recon_log_std: log σ_dec, shape (D,) or (B, D)
    :param latent_mean: μ_enc, shape (B, K)
    :param latent_log_std: log σ_enc, shape (B, K)
    :return: The ELBO per state, shape (B,)
    """
    log_likelihood = -0.5 * (((states - recon_mean) / recon_log_std.exp()) ** 2 + 2 * recon_log_std + math.log(2 * math.pi))
    kl = 0.5 * (latent_mean**2 + (2 * latent_log_std).exp() - 1 - 2 * latent_log_std)
    return log_likelihood.sum(dim=-1) - kl.sum(dim=-1)


class StateDensity(nn.Module):
    """
    The density model q(s|z) of SMM: a VAE over states, whose encoder and decoder both see the skill (one-hot).
    Its ELBO stands for log q(s|z).

    :param state_dim: Dimension of the states
    :param n_skills: Number of skills
    :param latent_dim: Dimension of the VAE's latent variable
    :param net_arch: Hidden layers of the encoder and of the decoder
    """

    def __init__(self, state_dim: int, n_skills: int, latent_dim: int = 8, net_arch: tuple[int, ...] = (128, 128)):
        super().__init__()
        self.encoder = nn.Sequential(*create_mlp(state_dim + n_skills, 2 * latent_dim, list(net_arch)))
        self.decoder = nn.Sequential(*create_mlp(latent_dim + n_skills, state_dim, list(net_arch)))
        self.recon_log_std = nn.Parameter(th.zeros(state_dim))

    def elbo(self, states: th.Tensor, skills: th.Tensor, sample: bool = True) -> th.Tensor:
        """
        :param states: s, shape (B, state_dim)
        :param skills: One-hot z, shape (B, n_skills)
        :param sample: Draw the latent from the encoder (training) or take its mean (a lower-variance estimate)
        :return: ELBO(s|z) ≈ log q(s|z), shape (B,)
        """
        latent_mean, latent_log_std = self.encoder(th.cat([states, skills], dim=-1)).chunk(2, dim=-1)
        latent_log_std = latent_log_std.clamp(-10.0, 2.0)
        latent = latent_mean + latent_log_std.exp() * th.randn_like(latent_mean) if sample else latent_mean
        recon_mean = self.decoder(th.cat([latent, skills], dim=-1))
        return gaussian_elbo(states, recon_mean, self.recon_log_std.clamp(-7.0, 2.0), latent_mean, latent_log_std)


class SMM(nn.Module):
    """
    SMM's models and reward: the state density q(s|z), the skill discriminator d(z|s), the target log p*(s) and the
    coefficients of each reward term. Observations are ``[state, one-hot skill]``, as made by :class:`SkillWrapper`.

    :param observation_space: The (skill-augmented) observation space, a 1-D Box
    :param n_skills: Number of skills (1: plain SMM, the skill terms vanish)
    :param target_log_prob: log p*(s) of a batch of states, (B, state_dim) -> (B,); None: uniform target (the term is
        a constant and is left out)
    :param target_coef: Weight of log p*(s)
    :param density_coef: Weight of −log q(s|z), the novelty term
    :param skill_coef: Weight of log d(z|s) − log p(z), the skill-diversity term
    :param env_reward_coef: Weight of the environment's reward in the reward the agent learns from
    :param learning_rate: Adam learning rate of the density model and of the discriminator
    :param latent_dim: Latent dimension of the VAE
    :param net_arch: Hidden layers of the VAE's encoder and decoder and of the discriminator
    :param device: Device of the models
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        n_skills: int = 1,
        target_log_prob: TargetLogProb | None = None,
        target_coef: float = 1.0,
        density_coef: float = 1.0,
        skill_coef: float = 1.0,
        env_reward_coef: float = 1.0,
        learning_rate: float = 1e-3,
        latent_dim: int = 8,
        net_arch: tuple[int, ...] = (128, 128),
        device: th.device | str = "cpu",
    ):
        super().__init__()
        check_skill_count(n_skills)
        coefficients = dict(
            target_coef=target_coef, density_coef=density_coef, skill_coef=skill_coef, env_reward_coef=env_reward_coef
        )
        for name, value in coefficients.items():
            if not is_finite_number(value):
                raise ValueError(f"SMM: {name}={value!r} is invalid, expected a finite number")
        if not (is_finite_number(learning_rate) and learning_rate > 0):
            raise ValueError(f"SMM: learning_rate={learning_rate!r} is invalid, expected a finite number above 0")
        if not (is_integer(latent_dim) and latent_dim >= 1):
            raise ValueError(f"SMM: latent_dim={latent_dim!r} is invalid, expected an integer >= 1")
        if not (isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1):
            raise ValueError(
                f"SMM needs a 1-D Box observation space ([state, one-hot skill], see SkillWrapper), got {observation_space}"
            )
        self.state_dim = observation_space.shape[0] - n_skills
        if self.state_dim < 1:
            raise ValueError(f"SMM: the observation space {observation_space} has no room for {n_skills} skill dimensions")
        low, high = observation_space.low[self.state_dim :], observation_space.high[self.state_dim :]
        if not (np.all(low == 0.0) and np.all(high == 1.0)):
            raise ValueError(
                f"SMM: the last n_skills={n_skills} features of the observation space {observation_space} range over "
                f"[{low}, {high}], not [0, 1] as a one-hot skill does: wrap the environment in "
                f"SkillWrapper(env, n_skills={n_skills}) (n_skills=1, plain SMM, too) and give SMM the wrapper's n_skills"
            )
        self.n_skills = n_skills
        self.target_log_prob = target_log_prob
        self.target_coef, self.density_coef, self.skill_coef = target_coef, density_coef, skill_coef
        self.env_reward_coef = env_reward_coef
        self.density = StateDensity(self.state_dim, n_skills, latent_dim, net_arch)
        self.discriminator = nn.Sequential(*create_mlp(self.state_dim, n_skills, list(net_arch)))
        self.optimizer = th.optim.Adam(self.parameters(), lr=learning_rate)
        self.stats: dict[str, float] = {}
        self.to(device)
        if target_log_prob is not None:
            low = np.nan_to_num(observation_space.low[: self.state_dim], neginf=-1.0)
            high = np.nan_to_num(observation_space.high[: self.state_dim], posinf=1.0)
            self.log_target(th.as_tensor(np.random.default_rng(0).uniform(low, high, size=(16, self.state_dim))))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the replay buffer: ``target_log_prob`` through cloudpickle, so that a lambda or a closure saves too."""
        return {**self.__dict__, "target_log_prob": cloudpickle.dumps(self.target_log_prob)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        target = state["target_log_prob"]
        super().__setstate__({**state, "target_log_prob": cloudpickle.loads(target) if isinstance(target, bytes) else target})

    def split(self, observations: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """
        :return: The states (B, state_dim) and the one-hot skills (B, n_skills) of skill-augmented observations
        :raises ValueError: where the skills are not one-hot (a ``SkillWrapper`` of another ``n_skills``)
        """
        states, skills = observations[:, : self.state_dim], observations[:, self.state_dim :]
        if not bool((((skills == 0) | (skills == 1)).all(dim=-1) & (skills.sum(dim=-1) == 1)).all()):
            raise ValueError(
                f"SMM: the last n_skills={self.n_skills} features of the observations are not a one-hot skill: give SMM "
                "(SMMReplayBuffer's n_skills) the n_skills of the SkillWrapper around the environment"
            )
        return states, skills

    def log_target(self, states: th.Tensor) -> th.Tensor:
        """log p*(s) from the user's function, checked: a NaN/inf or a wrong shape stops with a clear error."""
        if self.target_log_prob is None:
            return th.zeros(states.shape[0], device=states.device)
        values = np.asarray(self.target_log_prob(states.detach().cpu().numpy()), dtype=np.float64)
        if values.shape != (states.shape[0],):
            raise ValueError(
                f"SMM: target_log_prob must map states of shape (B, {self.state_dim}) to shape (B,), "
                f"got {values.shape} for B={states.shape[0]}"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError("SMM: target_log_prob returned NaN or inf; give log p*(s) finite on every reachable state")
        return th.as_tensor(values, dtype=states.dtype, device=states.device)

    def update(self, next_observations: th.Tensor) -> dict[str, float]:
        """
        One gradient step of the density model (maximum ELBO) and of the discriminator (cross-entropy) on replayed
        states.

        :param next_observations: Skill-augmented states from replay, shape (B, state_dim + n_skills)
        :return: The losses of the step
        """
        states, skills = self.split(next_observations.float())
        density_loss = -self.density.elbo(states, skills).mean()
        discriminator_loss = F.cross_entropy(self.discriminator(states), skills.argmax(dim=-1))
        self.optimizer.zero_grad()
        (density_loss + discriminator_loss).backward()
        self.optimizer.step()
        self.stats = {"density_loss": density_loss.item(), "discriminator_loss": discriminator_loss.item()}
        return self.stats

    @th.no_grad()
    def intrinsic_reward(self, next_observations: th.Tensor) -> th.Tensor:
        """
        :param next_observations: Skill-augmented states reached, shape (B, state_dim + n_skills)
        :return: r_z(s') with the current models, shape (B,)
        """
        states, skills = self.split(next_observations.float())
        log_discriminator = F.log_softmax(self.discriminator(states), dim=-1).gather(1, skills.argmax(-1, keepdim=True))
        return smm_reward(
            log_target=self.log_target(states),
            log_density=self.density.elbo(states, skills, sample=False),
            log_discriminator=log_discriminator.squeeze(-1),
            log_prior=-math.log(self.n_skills),
            target_coef=self.target_coef,
            density_coef=self.density_coef,
            skill_coef=self.skill_coef,
        )

    def reward(self, next_observations: th.Tensor, env_rewards: th.Tensor) -> th.Tensor:
        """
        :param next_observations: Skill-augmented states reached, shape (B, state_dim + n_skills)
        :param env_rewards: The environment's rewards, shape (B, 1)
        :return: The reward the agent learns from, c_env · r_env + r_z(s'), shape (B, 1)
        """
        intrinsic = self.intrinsic_reward(next_observations).unsqueeze(-1).to(env_rewards.dtype)
        return self.env_reward_coef * env_rewards + intrinsic


def check_skill_count(n_skills: Any) -> None:
    if not (is_integer(n_skills) and n_skills >= 1):
        raise ValueError(f"SMM: n_skills must be an integer >= 1, got {n_skills!r}")


class SkillWrapper(gym.Wrapper):
    """
    Draws a skill z ~ p(z) = Uniform{0, ..., n_skills − 1} at every reset and appends its one-hot code to each
    observation of the episode; the skill never changes within an episode and is drawn anew at the next one.
    The current skill is also in ``info["skill"]``.

    :param env: An environment with a 1-D Box observation space
    :param n_skills: Number of skills
    """

    def __init__(self, env: gym.Env, n_skills: int):
        super().__init__(env)
        check_skill_count(n_skills)
        space = env.observation_space
        if not (isinstance(space, spaces.Box) and len(space.shape) == 1):
            raise ValueError(
                f"SkillWrapper can augment 1-D Box observation spaces only, got {space}; flatten the observations first "
                "(e.g. gymnasium.wrappers.FlattenObservation)"
            )
        self.n_skills = n_skills
        self.skill = 0
        self.observation_space = spaces.Box(
            np.concatenate([space.low, np.zeros(n_skills)]).astype(np.float32),
            np.concatenate([space.high, np.ones(n_skills)]).astype(np.float32),
            dtype=np.float32,
        )

    def _augment(self, observation: np.ndarray) -> np.ndarray:
        one_hot = np.zeros(self.n_skills, dtype=np.float32)
        one_hot[self.skill] = 1.0
        return np.concatenate([np.asarray(observation, dtype=np.float32), one_hot])

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        self.skill = int(self.np_random.integers(self.n_skills))
        return self._augment(observation), {**info, "skill": self.skill}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._augment(observation), float(reward), terminated, truncated, {**info, "skill": self.skill}


class SMMReplayBuffer(ReplayBuffer):
    """
    SB3's replay buffer whose sampled rewards are SMM's: every :meth:`sample` first takes one gradient step of the
    density model and of the discriminator on the sampled states (so both are fitted to the replayed history of
    states), then returns the batch with rewards c_env · r_env + r_z(s') computed with the updated models. The SMM
    models live in the buffer (:attr:`smm`): save the replay buffer to resume SMM training.

    Takes SB3's :class:`~stable_baselines3.common.buffers.ReplayBuffer` arguments, plus those of :class:`SMM`
    (``n_skills``, ``target_log_prob``, the coefficients, ...), e.g. through ``replay_buffer_kwargs``.
    """

    #: The rewards it samples are not the ones it stores: checks of the critic against the stored rewards do not apply
    relabels_rewards = True

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        **smm_kwargs: Any,
    ):
        super().__init__(
            buffer_size, observation_space, action_space, device, n_envs, optimize_memory_usage, handle_timeout_termination
        )
        self.smm = SMM(observation_space, device=self.device, **smm_kwargs)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """
        :param batch_size: Transitions to sample
        :param env: The ``VecNormalize`` of the model's environment, if any: the batch's observations and environment
            rewards are normalised as the agent sees them, while SMM models the states, skills and target as the
            environment gives them (a normalised one-hot is no skill, and ``target_log_prob`` takes raw states)
        :return: The batch, its rewards c_env · r_env + r_z(s')
        """
        data = super().sample(batch_size)
        states = data.next_observations
        self.smm.update(states)
        if env is not None:
            observations, next_observations = (
                self.to_torch(cast(np.ndarray, env.normalize_obs(tensor.cpu().numpy())))
                for tensor in (data.observations, data.next_observations)
            )
            rewards = self.to_torch(env.normalize_reward(data.rewards.cpu().numpy()))
            data = data._replace(observations=observations, next_observations=next_observations, rewards=rewards)
        return data._replace(rewards=self.smm.reward(states, data.rewards))


class PolicySnapshots(BaseCallback):
    """
    Keeps a copy of the policy every ``snapshot_freq`` environment steps: the historical policies whose average is
    the policy SMM's fictitious play returns (the paper's historical averaging). Also logs the SMM losses when the
    model's replay buffer is an :class:`SMMReplayBuffer`.

    :param snapshot_freq: Environment steps between snapshots
    :param verbose: Verbosity level
    """

    def __init__(self, snapshot_freq: int, verbose: int = 0):
        super().__init__(verbose)
        if snapshot_freq < 1:
            raise ValueError(f"snapshot_freq must be a positive integer, got {snapshot_freq}")
        self.snapshot_freq = snapshot_freq
        self.snapshots: list[BasePolicy] = []
        self._next_snapshot = snapshot_freq

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next_snapshot:
            snapshot = copy.deepcopy(self.model.policy)
            snapshot.set_training_mode(False)
            self.snapshots.append(snapshot)
            self._next_snapshot += self.snapshot_freq
        buffer = getattr(self.model, "replay_buffer", None)
        if isinstance(buffer, SMMReplayBuffer):
            for key, value in buffer.smm.stats.items():
                self.logger.record(f"smm/{key}", value)
        return True

    def save(self, path: str | Path) -> None:
        """
        Save the snapshots (SB3 policy files) and the schedule to a folder, so that a run resumed from a saved model
        keeps its historical policies. The folder holds ``snapshots.json`` and one ``snapshot_<k>.pth`` per snapshot.

        :param path: The folder (created if needed)
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        files = [f"snapshot_{index}.pth" for index in range(len(self.snapshots))]
        for snapshot, name in zip(self.snapshots, files, strict=True):
            snapshot.save(str(folder / name))
        manifest = {
            "snapshot_freq": self.snapshot_freq,
            "next_snapshot": self._next_snapshot,
            "files": files,
            "classes": [f"{type(snapshot).__module__}:{type(snapshot).__qualname__}" for snapshot in self.snapshots],
        }
        (folder / SNAPSHOTS_MANIFEST).write_text(json.dumps(manifest, indent=1))

    @classmethod
    def load(cls, path: str | Path, device: th.device | str = "auto", verbose: int = 0) -> "PolicySnapshots":
        """
        Load snapshots saved by :meth:`save`. Pass the result to ``learn(..., reset_num_timesteps=False)`` of the
        reloaded model to go on taking snapshots on the same schedule, or its :attr:`snapshots` to
        :class:`HistoricalAveragePolicy`.

        :param path: The folder written by :meth:`save`
        :param device: Device of the loaded policies
        :param verbose: Verbosity level
        :return: The callback, holding the saved snapshots
        """
        folder = Path(path)
        manifest_path = folder / SNAPSHOTS_MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no {SNAPSHOTS_MANIFEST} in {folder}: not a folder written by PolicySnapshots.save")
        manifest = json.loads(manifest_path.read_text())
        callback = cls(manifest["snapshot_freq"], verbose)
        callback._next_snapshot = manifest["next_snapshot"]
        for name, class_path in zip(manifest["files"], manifest["classes"], strict=True):
            module, qualname = class_path.split(":")
            policy_class = functools.reduce(getattr, qualname.split("."), importlib.import_module(module))
            snapshot = policy_class.load(str(folder / name), device=device)
            snapshot.set_training_mode(False)
            callback.snapshots.append(snapshot)
        return callback


class HistoricalAveragePolicy:
    """
    The average of historical policies, run as SMM prescribes: one snapshot, drawn uniformly, acts for a whole
    episode. It has SB3's ``predict`` signature, so ``evaluate_policy`` and rollouts can use it.

    :param snapshots: The policies (e.g. :attr:`PolicySnapshots.snapshots`)
    :param seed: Seed of the snapshot draws
    """

    def __init__(self, snapshots: list[BasePolicy], seed: int | None = None):
        if not snapshots:
            raise ValueError("HistoricalAveragePolicy needs at least one policy snapshot")
        self.snapshots = snapshots
        self.rng = np.random.default_rng(seed)
        self.choices: np.ndarray | None = None

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """
        :param observation: A batch of observations, one per environment, or one observation (as SB3's ``predict``
            takes it)
        :param episode_start: Which environments start an episode (a new snapshot is drawn for them)
        :return: The actions (one action for one observation), and ``None`` (no recurrent state)
        """
        if not is_vectorized_observation(observation, self.snapshots[0].observation_space):
            batch, _ = self.predict(observation[np.newaxis], state, episode_start, deterministic)
            return batch[0], None
        n_envs = observation.shape[0]
        if self.choices is None or len(self.choices) != n_envs:
            self.choices = np.asarray(self.rng.integers(len(self.snapshots), size=n_envs))
        elif episode_start is not None:
            starting = np.asarray(episode_start, dtype=bool)
            self.choices[starting] = self.rng.integers(len(self.snapshots), size=int(starting.sum()))
        choices = self.choices
        actions = None
        for index in np.unique(choices):
            rows = choices == index
            predicted, _ = self.snapshots[index].predict(observation[rows], deterministic=deterministic)
            if actions is None:
                actions = np.zeros((n_envs, *predicted.shape[1:]), dtype=predicted.dtype)
            actions[rows] = predicted
        assert actions is not None
        return actions, None
