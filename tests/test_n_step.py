"""
The n-step expected-SARSA critic loss (paper, Sec. 4, Eq. (13) with the Retrace traces cut): each critic regresses
y = r + γⁿ(1 − done)·E_{π_old} Q'(s', ·), computed here by hand from a target critic whose values are known.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_mpo import MPO


class RandomEndingEnv(gym.Env):
    """Random observations and rewards; each step ends its episode with probability 0.2 (a termination, not a timeout)."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)

    def __init__(self, action_space: spaces.Space):
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict]:
        terminated = bool(self.np_random.random() < 0.2)
        return self.observation_space.sample(), float(self.np_random.normal()), terminated, False, {}


def trained_model(action_space: spaces.Space, **kwargs) -> MPO:
    env = RandomEndingEnv(action_space)
    env.observation_space.seed(0)
    settings = dict(q_target="n_step", n_steps=3, learning_starts=80, batch_size=64, n_action_samples=4, seed=0)
    model = MPO("MlpPolicy", env, **settings, **kwargs)
    model.learn(120)  # some updates, so that the networks are not at their initial values
    return model


def constant_output(layer: th.nn.Linear, values: list[float]) -> None:
    """Make a linear output layer return ``values`` whatever its input."""
    with th.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(th.tensor(values))


def regression_loss(q_values: np.ndarray, targets: np.ndarray) -> float:
    """½ Σ_i mean_b (Q_i − y)², each critic of the ensemble against the same targets, by loops."""
    n_samples, n_critics = q_values.shape
    return sum(0.5 * sum((q_values[b, i] - targets[b]) ** 2 for b in range(n_samples)) / n_samples for i in range(n_critics))


def test_box_critics_regress_the_n_step_return_plus_the_smallest_target_value():
    """Two target networks at 2.0 and 1.5 everywhere: the bootstrap is 1.5, the ensemble's smallest."""
    model = trained_model(spaces.Box(-1.0, 1.0, shape=(2,)), policy_kwargs=dict(net_arch=[16], n_critics=2))
    for network, value in zip(model.critic_target.q_networks, (2.0, 1.5), strict=True):
        constant_output(network[-1], [value])
    batch = model.replay_buffer.sample(model.batch_size)
    dones = batch.dones.numpy()[:, 0]
    assert 0 < dones.mean() < 1 and (batch.discounts.numpy() > model.gamma**3 + 1e-6).any(), "endings inside the n steps"
    evaluation = model.evaluation.evaluate(batch)

    targets = batch.rewards.numpy()[:, 0] + batch.discounts.numpy()[:, 0] * (1.0 - dones) * 1.5
    with th.no_grad():
        q_values = th.cat(model.critic(batch.observations, model.actor.squash(batch.actions)), dim=1).double().numpy()
    assert evaluation.critic_loss.item() == pytest.approx(regression_loss(q_values, targets), rel=1e-5)


def test_discrete_critic_regresses_the_n_step_return_plus_the_exact_expected_target_value():
    """A target critic with values (1, −2, 3) over the actions: the bootstrap is Σ_a π_old(a|s')·Q'(s', a)."""
    model = trained_model(spaces.Discrete(3), policy_kwargs=dict(net_arch=[16]))
    action_values = [1.0, -2.0, 3.0]
    constant_output(model.critic_target.q_net[-1], action_values)
    batch = model.replay_buffer.sample(model.batch_size)
    evaluation = model.evaluation.evaluate(batch)

    with th.no_grad():
        policy_old = th.distributions.Categorical(logits=model.actor_target.log_probs(batch.next_observations))
        expected_next = (policy_old.probs.double() * th.tensor(action_values, dtype=th.float64)).sum(-1).numpy()
        q_taken = model.critic(batch.observations).gather(1, batch.actions.long()).double().numpy()
    assert expected_next.std() > 1e-3, "π_old differs between states"
    dones = batch.dones.numpy()[:, 0]
    targets = batch.rewards.numpy()[:, 0] + batch.discounts.numpy()[:, 0] * (1.0 - dones) * expected_next
    assert evaluation.critic_loss.item() == pytest.approx(regression_loss(q_taken, targets), rel=1e-5)
