"""The E-step's temperature follows the scale of the rewards: the E-step KL stays at its bound without VecNormalize."""

import warnings

import gymnasium as gym
import pytest
from gymnasium.wrappers import TransformReward
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_mpo import MPO
from sb3_mpo.mpo import losses
from sb3_mpo.mpo.improvement import CategoricalImprovementBatch

SMALL = dict(learning_starts=300, batch_size=64, policy_kwargs=dict(net_arch=[64, 64]))


def fresh_e_step_kl(model: MPO) -> float:
    """KL(q || pi_old) of the E-step on a new replay batch, at the temperature the model holds after training."""
    replay_data = model.replay_buffer.sample(32)
    batch, _ = model.improvement.target_values(replay_data.next_observations.flatten(0, 1))
    temperature = model.multipliers.temperature.detach()
    if isinstance(batch, CategoricalImprovementBatch):
        return losses.tilted_kl(batch.q_values.T, temperature, batch.log_probs_old.T).item()
    return losses.tilted_kl(batch.q_values, temperature).item()


@pytest.mark.parametrize(
    "env_id, scale, steps",
    [("Pendulum-v1", 1e3, 1000), ("Pendulum-v1", 1e-3, 1000), ("CartPole-v1", 1e4, 1000)],
)
def test_e_step_kl_stays_at_its_bound_under_scaled_rewards(env_id, scale, steps):
    """With rewards scaled by 1e-3 to 1e4, the temperature keeps KL(q || pi_old) within a few times epsilon."""
    env = TransformReward(gym.make(env_id), lambda reward: reward * scale)
    model = MPO("MlpPolicy", env, seed=0, **SMALL)
    model.learn(steps)
    assert model.logger.name_to_value["train/kl_q"] == pytest.approx(model.epsilon, rel=1e-2)
    assert fresh_e_step_kl(model) < 3 * model.epsilon


@pytest.mark.parametrize(
    "scale, kwargs, warns",
    [(1e4, {}, True), (1.0, {}, False), (1e4, {"value_normalization": True}, False)],
    ids=["large_rewards", "unit_rewards", "large_rewards_with_popart"],
)
def test_first_update_warns_when_returns_outgrow_an_unnormalised_critic(scale, kwargs, warns):
    """Pendulum's rewards x1e4 put the returns near 1e6: the first update says so, and names the remedies."""
    env = TransformReward(gym.make("Pendulum-v1"), lambda reward: reward * scale)
    model = MPO("MlpPolicy", env, seed=0, learning_starts=100, batch_size=32, q_target="n_step", **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(102)
    messages = [str(warning.message) for warning in caught if "returns reach about" in str(warning.message)]
    assert len(messages) == int(warns)
    if warns:
        assert "value_normalization=True" in messages[0] and "VecNormalize" in messages[0]


def test_rewards_normalised_by_vec_normalize_do_not_warn():
    """The check reads the rewards as the critic sees them: VecNormalize's, not the environment's."""
    env = VecNormalize(
        DummyVecEnv([lambda: TransformReward(gym.make("Pendulum-v1"), lambda reward: reward * 1e4)]), norm_obs=False
    )
    model = MPO("MlpPolicy", env, seed=0, learning_starts=100, batch_size=32, q_target="n_step")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(102)
    assert not [warning for warning in caught if "returns reach about" in str(warning.message)]
