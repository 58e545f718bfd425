"""
Nothing fails silently: a Gaussian policy whose standard deviation reaches its floor, a critic whose values leave
every return the rewards allow, and a categorical critic whose support misses the returns are reported, once each
(sb3_mpo.mpo.health).
"""

import warnings

import numpy as np
import pytest
import torch as th

from sb3_mpo import MPO
from sb3_mpo.mpo import health, losses
from sb3_mpo.mpo.policies import critic_output_layers

SMALL = dict(learning_starts=10_000, batch_size=32, q_target="n_step", policy_kwargs=dict(net_arch=[16, 16]))


def filled_model(**kwargs) -> MPO:
    # learning_starts above the steps taken: learn() only fills the buffer, the tests run the updates themselves
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, **{**SMALL, **kwargs})
    model.learn(200)
    return model


def pin_std_to_its_floor(model: MPO) -> None:
    """softplus(x) ≈ 0 for x ≪ 0: the actor's standard deviation becomes min_std at every state."""
    with th.no_grad():
        model.actor.std.weight.zero_()
        model.actor.std.bias.fill_(-50.0)


def warnings_about(model: MPO, topic: str, updates: int = 1) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(updates, model.batch_size)
    return [str(warning.message) for warning in caught if topic in str(warning.message)]


def collapse_warnings(model: MPO, updates: int = 1) -> list[str]:
    return warnings_about(model, "collapsed", updates)


def test_a_standard_deviation_at_its_floor_is_reported_once() -> None:
    model = filled_model()
    pin_std_to_its_floor(model)
    (message,) = collapse_warnings(model)
    assert f"min_std={model.actor.min_std:.3g}" in message and "epsilon_std" in message
    assert model.logger.name_to_value["train/std_mean"] <= 2 * model.actor.min_std
    assert collapse_warnings(model) == [], "warned a second time"


def test_an_exploring_policy_is_not_reported() -> None:
    model = filled_model()
    assert collapse_warnings(model, updates=3) == []
    assert model.logger.name_to_value["train/std_mean"] > 10 * model.actor.min_std


@pytest.mark.parametrize("min_std", [1e-4, 1e-2])
def test_the_floor_is_the_policy_s_own(min_std: float) -> None:
    """The check reads the actor's min_std: a standard deviation at another floor is not at this one."""
    model = filled_model(policy_kwargs=dict(net_arch=[16, 16], min_std=min_std))
    pin_std_to_its_floor(model)
    assert len(collapse_warnings(model)) == 1
    model = filled_model(policy_kwargs=dict(net_arch=[16, 16], min_std=min_std))
    with th.no_grad():  # a standard deviation ten times the floor, softplus(offset) + min_std, is small, not collapsed
        model.actor.std.weight.zero_()
        model.actor.std.bias.zero_()
        model.actor.std_offset = float(th.log(th.expm1(th.tensor(9 * min_std))))
    assert collapse_warnings(model) == []


def test_the_return_bound_is_the_return_of_the_largest_reward_forever() -> None:
    """max|r| / (1 - γ) against the discounted sum of the largest reward over a long horizon, and the mean for the scale."""
    rewards = np.array([[-3.0], [0.5], [2.0]])
    gamma = 0.9
    forever = sum(3.0 * gamma**t for t in range(2000))
    assert health.return_bound(rewards, gamma) == pytest.approx(forever)
    assert health.return_scale(rewards, gamma) == pytest.approx(sum((5.5 / 3) * gamma**t for t in range(2000)))


def test_health_messages_name_what_they_measured() -> None:
    rewards = np.array([1.0, -2.0])  # bound 2 / (1 - 0.99) = 200
    assert health.diverged_critic(399.0, rewards, 0.99, factor=2.0, env_step=7) is None
    message = health.diverged_critic(-401.0, rewards, 0.99, factor=2.0, env_step=7)
    assert message is not None and "-401" in message and "400" in message and "env step 7" in message
    assert health.diverged_critic(0.3, np.zeros(5), 0.99, factor=2.0, env_step=7) is None  # no reward seen yet
    assert health.collapsed_exploration(2.1e-4, 1e-4, factor=2.0, env_step=3) is None
    assert "min_std=0.0001" in (health.collapsed_exploration(2e-4, 1e-4, factor=2.0, env_step=3) or "")
    assert health.large_returns(rewards, 0.99, limit=150.0) is None  # scale 1.5 / 0.01 = 150
    assert "above 2e+02" in (health.large_returns(rewards * 10, 0.99, limit=200.0) or "")


def push_critic_values(model: MPO, value: float) -> None:
    """The critic (and its target) output ``value`` at every input: its output layer's weights zero, its bias ``value``."""
    with th.no_grad():
        for critic in (model.critic, model.critic_target):
            for layer in critic_output_layers(critic):
                layer.weight.zero_()
                layer.bias.fill_(value)


def test_a_critic_beyond_every_return_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MPO, "health_check_interval", 2)
    model = filled_model()
    bound = health.return_bound(model._critic_rewards(), model.gamma)  # Pendulum: |r| <= 16.3, so about 1600
    push_critic_values(model, -100 * bound)
    assert warnings_about(model, "diverged", updates=1) == [], "checked before the interval"
    (message,) = warnings_about(model, "diverged", updates=1)
    assert "env step 200" in message and "max|r| / (1 - gamma)" in message
    assert warnings_about(model, "diverged", updates=2) == [], "warned a second time"


def test_a_critic_within_the_returns_is_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MPO, "health_check_interval", 1)
    model = filled_model()
    bound = health.return_bound(model._critic_rewards(), model.gamma)
    push_critic_values(model, -0.5 * bound)
    assert warnings_about(model, "diverged", updates=3) == []
    # PopArt rescales the values, so their size says nothing there: not checked
    model = filled_model(value_normalization=True)
    assert model._critic_rewards() is None


def test_rewards_relabelled_at_sampling_are_not_compared() -> None:
    """SMM's buffer samples rewards it computes then (intrinsic ones): the stored rewards bound nothing."""
    from sb3_mpo.exploration.smm import SMMReplayBuffer

    assert SMMReplayBuffer.relabels_rewards
    model = filled_model()
    assert model._critic_rewards() is not None
    model.replay_buffer.relabels_rewards = True  # type: ignore[attr-defined]
    assert model._critic_rewards() is None


def test_mass_outside_the_support_is_summed_atom_by_atom() -> None:
    generator = th.Generator().manual_seed(0)
    atoms = th.linspace(-5.0, 5.0, 11, dtype=th.float64)
    probs = th.softmax(th.randn(6, 11, generator=generator, dtype=th.float64), dim=-1)
    target_atoms = 3.0 * th.randn(6, 1, generator=generator, dtype=th.float64) + 0.9 * atoms  # some rows leave [-5, 5]
    outside = [sum(probs[b, j].item() for j in range(11) if not -5.0 <= target_atoms[b, j].item() <= 5.0) for b in range(6)]
    assert 0.0 < np.mean(outside) < 1.0
    assert losses.mass_outside_support(target_atoms, probs, atoms).item() == pytest.approx(np.mean(outside))
    assert losses.mass_outside_support(0.5 * atoms.expand(6, 11), probs, atoms).item() == 0.0


def test_returns_outside_the_support_message_names_the_share_and_the_support() -> None:
    assert health.returns_outside_support(0.01, (-10.0, 10.0), limit=0.01, env_step=5, rewards=None, gamma=0.99) is None
    message = health.returns_outside_support(0.25, (-10.0, 10.0), limit=0.01, env_step=5, rewards=np.array([-3.0]), gamma=0.9)
    assert message is not None and "25.0%" in message and "critic_support=(-10.0, 10.0)" in message
    assert "env step 5" in message and "±30" in message  # max|r| / (1 - γ) = 3 / 0.1


def categorical_model(support: tuple[float, float]) -> MPO:
    return filled_model(policy_kwargs=dict(net_arch=[16, 16], critic_support=support, n_atoms=21))


def test_a_categorical_support_that_misses_the_returns_is_reported_once() -> None:
    """Pendulum's rewards lie in [-16.3, 0]: most 1-step targets r + γ·z of a support of [-10, 10] leave it."""
    model = categorical_model((-10.0, 10.0))
    (message,) = warnings_about(model, "outside critic_support", updates=2)
    assert "critic_support=(-10.0, 10.0)" in message and "env step 200" in message
    assert model.logger.name_to_value["train/mass_outside"] > MPO.mass_outside_limit
    assert warnings_about(model, "outside critic_support", updates=2) == [], "warned a second time"


def test_a_support_that_covers_the_returns_is_not_reported() -> None:
    """Every return of rewards in [-16.3, 0] with γ = 0.99 lies in [-1630, 0]: nothing leaves [-1700, 100]."""
    model = categorical_model((-1700.0, 100.0))
    assert warnings_about(model, "outside critic_support", updates=3) == []
    assert model.logger.name_to_value["train/mass_outside"] == 0.0
