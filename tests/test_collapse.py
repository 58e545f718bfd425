"""Nothing collapses silently: a Gaussian policy whose standard deviation reaches its floor is reported, once."""

import warnings

import pytest
import torch as th

from sb3_mpo import MPO

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


def collapse_warnings(model: MPO, updates: int = 1) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(updates, model.batch_size)
    return [str(warning.message) for warning in caught if "collapsed" in str(warning.message)]


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
