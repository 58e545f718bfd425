"""Value normalisation (PopArt): its maths against direct computation, and MPO's updates made independent of the
reward scale."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.wrappers import TransformReward

from sb3_mpo import MPO
from sb3_mpo.mpo.policies import critic_output_layers
from sb3_mpo.mpo.popart import batch_moments, moments_std, per_step_rewards, preserving_output_layer, updated_moments


def test_the_rescaled_output_layer_keeps_every_value():
    """σ'(W'h + b') + μ' = σ(Wh + b) + μ for random layers, inputs and statistics, in float64."""
    generator = th.Generator().manual_seed(0)
    weight, bias = th.randn(3, 5, generator=generator, dtype=th.float64), th.randn(3, generator=generator, dtype=th.float64)
    hidden = th.randn(7, 5, generator=generator, dtype=th.float64)
    old, new = (th.tensor(-40.0, dtype=th.float64), th.tensor(12.0, dtype=th.float64)), (
        th.tensor(3.5, dtype=th.float64),
        th.tensor(0.25, dtype=th.float64),
    )
    new_weight, new_bias = preserving_output_layer(weight, bias, old, new)
    before = old[1] * (hidden @ weight.T + bias) + old[0]
    after = new[1] * (hidden @ new_weight.T + new_bias) + new[0]
    th.testing.assert_close(after, before)


def test_moments_follow_their_moving_averages_and_the_std_never_vanishes():
    targets = th.tensor([1.0, 2.0, 4.0])
    moments = batch_moments(targets)
    assert moments.tolist() == pytest.approx([np.mean([1, 2, 4]), np.mean([1, 4, 16])])
    mean, mean_square = updated_moments(th.tensor(0.5, dtype=th.float64), th.tensor(2.0, dtype=th.float64), moments, 0.1)
    assert mean.item() == pytest.approx(0.9 * 0.5 + 0.1 * np.mean([1, 2, 4]))
    assert mean_square.item() == pytest.approx(0.9 * 2.0 + 0.1 * np.mean([1, 4, 16]))
    assert moments_std(mean, mean_square).item() == pytest.approx(np.sqrt(mean_square.item() - mean.item() ** 2))
    constant = th.tensor(1e4, dtype=th.float64)  # every target equal: the std is floored relative to their size
    assert moments_std(constant, constant**2).item() == pytest.approx(1e-6 * 1e4)


def test_popart_update_keeps_the_critics_values():
    model = MPO("MlpPolicy", "Pendulum-v1", value_normalization=True, seed=0)
    normalizer = model.value_normalizer
    rewards = th.tensor([-3.0, -1.0, -8.0])
    normalizer.initialise(batch_moments(rewards), model.gamma)
    mean, std = normalizer.statistics()  # (mean r, rms r) / (1 - gamma)
    assert (mean.item(), std.item()) == pytest.approx((-4.0 / 0.01, np.sqrt(np.mean([9.0, 1.0, 64.0])) / 0.01))
    obs, actions = th.randn(16, 3), th.rand(1, 16, 1) * 2 - 1
    before = [normalizer.denormalize(critic.sampled_q_values(obs, actions)) for critic in (model.critic, model.critic_target)]
    layers = [*critic_output_layers(model.critic), *critic_output_layers(model.critic_target)]
    normalizer.update(batch_moments(th.linspace(-900.0, 100.0, 64)), layers)
    after = [normalizer.denormalize(critic.sampled_q_values(obs, actions)) for critic in (model.critic, model.critic_target)]
    for values_before, values_after in zip(before, after, strict=True):
        th.testing.assert_close(values_after, values_before, rtol=1e-5, atol=1e-3)


def test_a_constant_reward_sets_sigma_to_the_size_of_the_returns():
    """Every reward −2: the returns are near −2 / (1 − γ), and so is σ (the standard deviation of the rewards is 0)."""
    model = MPO("MlpPolicy", "Pendulum-v1", value_normalization=True, gamma=0.9, seed=0)
    model.value_normalizer.initialise(batch_moments(th.full((32,), -2.0)), model.gamma)
    mean, std = model.value_normalizer.statistics()
    assert (mean.item(), std.item()) == pytest.approx((-20.0, 20.0))


def test_an_n_step_return_counts_as_the_constant_reward_per_step_that_earns_it():
    """R = Σ_{i<k} γⁱ·r over k steps (fewer where the episode ended) gives back r, for any k; one-step rewards stay."""
    gamma, reward = 0.97, -2.5
    steps = th.tensor([[1], [2], [5], [3]])
    returns = th.tensor([[sum(gamma**i * reward for i in range(k))] for k in steps.flatten().tolist()])
    per_step = per_step_rewards(returns, gamma ** steps.double(), gamma)
    th.testing.assert_close(per_step, th.full((4, 1), reward, dtype=th.float64))
    assert per_step_rewards(returns, None, gamma) is returns
    # a discount rounded to 1 in float32 (γ within float32's step of 1) stays finite: 1 − γᵏ >= 1 − γ for k >= 1
    near_one = per_step_rewards(th.tensor([[-3.0]]), th.tensor([[1.0]]), 1 - 1e-9)
    assert th.isfinite(near_one).all()


def test_popart_starts_at_the_size_of_the_returns_whatever_n():
    """Every reward −2: the first statistics are (−2, 2) / (1 − γ) with one-step and with 5-step targets alike."""
    env = TransformReward(gym.make("Pendulum-v1"), lambda reward: -2.0)
    settings = dict(learning_starts=64, batch_size=64, n_action_samples=4, q_target="n_step", gamma=0.9, seed=0)
    for n_steps in (1, 5):
        model = MPO("MlpPolicy", env, value_normalization=True, n_steps=n_steps, policy_kwargs=dict(net_arch=[8]), **settings)
        model.learn(65)
        assert model._n_updates >= 1
        mean, std = model.value_normalizer.statistics()  # moved from (−20, 20) by one update's moving average at most
        assert (mean.item(), std.item()) == pytest.approx((-20.0, 20.0), rel=0.01), n_steps


def test_zero_rewards_leave_the_values_unnormalised_until_the_first_reward_which_keeps_them():
    """
    While every reward in replay is 0 (a sparse task before its first success) the statistics stay unset, (μ, σ) =
    (0, 1), and the critic learns unnormalised values; the first batch with a reward sets them from its rewards, and the
    critics' values are kept across it.
    """
    env = TransformReward(gym.make("Pendulum-v1"), lambda reward: 0.0)
    settings = dict(learning_starts=64, batch_size=64, n_action_samples=4, buffer_size=1000, q_target="n_step")
    model = MPO("MlpPolicy", env, value_normalization=True, seed=0, policy_kwargs=dict(net_arch=[16]), **settings)
    model.learn(150)
    normalizer = model.value_normalizer
    assert model._n_updates > 0 and not bool(normalizer.initialised)
    assert normalizer.mean.item() == 0.0 and normalizer.mean_square.item() == 1.0, "no update moved the statistics"
    buffer = model.replay_buffer
    buffer.rewards[: buffer.pos] = np.where(np.arange(buffer.pos) % 2, -30.0, 0.0)[:, None]  # rewards now stand in replay
    obs, actions = th.randn(16, 3), th.rand(1, 16, 1) * 2 - 1
    critics = (model.critic, model.critic_target)
    with th.no_grad():
        before = [normalizer.denormalize(critic.sampled_q_values(obs, actions)) for critic in critics]
    batch = buffer.sample(model.batch_size)
    model.evaluation.initialise_value_normalizer(batch.rewards)
    rewards, horizon = batch.rewards.double(), 1 / (1 - model.gamma)
    mean, std = normalizer.statistics()
    assert bool(normalizer.initialised)
    assert (mean.item(), std.item()) == pytest.approx(
        (rewards.mean().item() * horizon, rewards.square().mean().sqrt().item() * horizon)
    )
    with th.no_grad():
        after = [normalizer.denormalize(critic.sampled_q_values(obs, actions)) for critic in critics]
    for values_before, values_after in zip(before, after, strict=True):
        th.testing.assert_close(values_after, values_before, rtol=1e-5, atol=1e-3)  # float32 outputs rescaled by ~1/2000
    model.learn(20, reset_num_timesteps=False)  # and training goes on, normalised
    assert np.isfinite(model.logger.name_to_value["train/critic_loss"])


def train(scale: float, value_normalization: bool, **kwargs) -> MPO:
    env = TransformReward(gym.make("Pendulum-v1"), lambda reward: float(reward) * scale)
    model = MPO(
        "MlpPolicy", env, seed=3, learning_starts=100, batch_size=64, n_action_samples=8,
        value_normalization=value_normalization, policy_kwargs=dict(net_arch=[32, 32]), **kwargs,
    )  # fmt: skip
    th.set_num_threads(1)
    return model.learn(300)


def actor_parameters(model: MPO) -> th.Tensor:
    return th.cat([param.detach().reshape(-1) for param in model.actor.parameters()])


@pytest.mark.parametrize("q_target", ["retrace", "n_step"])
def test_updates_do_not_depend_on_the_reward_scale(q_target):
    """Rewards x1000: with PopArt the policy learns the same (the statistics scale instead); without, it does not."""
    normalised = [train(scale, True, q_target=q_target) for scale in (1.0, 1000.0)]
    th.testing.assert_close(actor_parameters(normalised[1]), actor_parameters(normalised[0]), rtol=1e-3, atol=1e-4)
    (mean, std), (scaled_mean, scaled_std) = (model.value_normalizer.statistics() for model in normalised)
    assert scaled_mean.item() == pytest.approx(1000 * mean.item(), rel=1e-3)
    assert scaled_std.item() == pytest.approx(1000 * std.item(), rel=1e-3)
    plain = [train(scale, False, q_target=q_target) for scale in (1.0, 1000.0)]
    assert not th.allclose(actor_parameters(plain[1]), actor_parameters(plain[0]), rtol=1e-3, atol=1e-4)


def test_the_statistics_are_saved_and_restored(tmp_path):
    model = train(1.0, True)
    model.save(tmp_path / "model")
    loaded = MPO.load(tmp_path / "model")
    for saved, restored in zip(model.value_normalizer.statistics(), loaded.value_normalizer.statistics(), strict=True):
        assert th.equal(saved, restored)
    assert bool(loaded.value_normalizer.initialised)
