"""
Nothing fails silently: a Gaussian policy whose standard deviation reaches its floor, a critic whose values leave
every return the rewards allow, a categorical critic whose support misses the returns and a KL constraint that misses
its bound are reported, once each (sb3_mpo.mpo.health).
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


def test_a_floor_close_below_the_initial_std_is_no_collapse_at_the_start() -> None:
    """init_std 0.5, min_std 0.3 (the constructor accepts it): the first updates leave the std near 0.5, unreported."""
    model = filled_model(policy_kwargs=dict(net_arch=[32, 32], init_std=0.5, min_std=0.3))
    assert collapse_warnings(model, updates=2) == []
    assert model.logger.name_to_value["train/std_mean"] > 0.45


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
    assert health.collapsed_exploration(2.1e-4, 1e-4, 0.5, factor=2.0, env_step=3) is None
    assert "min_std=0.0001" in (health.collapsed_exploration(2e-4, 1e-4, 0.5, factor=2.0, env_step=3) or "")
    # a floor close below the start: not collapsed at the start (0.49 of 0.5, floor 0.3), only past halfway down (0.4)
    assert health.collapsed_exploration(0.49, 0.3, 0.5, factor=2.0, env_step=3) is None
    assert health.collapsed_exploration(0.41, 0.3, 0.5, factor=2.0, env_step=3) is None
    assert "min_std=0.3" in (health.collapsed_exploration(0.4, 0.3, 0.5, factor=2.0, env_step=3) or "")
    assert health.large_returns(rewards, 0.99, limit=150.0) is None  # scale 1.5 / 0.01 = 150
    assert "above 2e+02" in (health.large_returns(rewards * 10, 0.99, limit=200.0) or "")


def push_critic_values(model: MPO, value: float) -> None:
    """The critic (and its target) output ``value`` at every input: its output layer's weights zero, its bias ``value``."""
    with th.no_grad():
        for critic in (model.critic, model.critic_target):
            for layer in critic_output_layers(critic):
                layer.weight.zero_()
                layer.bias.fill_(value)


@pytest.mark.parametrize("value_normalization", [False, True], ids=["plain", "popart"])
def test_a_critic_beyond_every_return_is_reported_once(monkeypatch: pytest.MonkeyPatch, value_normalization: bool) -> None:
    """With PopArt too: its outputs are normalised, but the values compared (σ·q̂ + μ, as logged) are in return units."""
    monkeypatch.setattr(MPO, "health_check_interval", 2)
    model = filled_model(value_normalization=value_normalization)
    bound = health.return_bound(model._critic_rewards(), model.gamma)  # Pendulum: |r| <= 16.3, so about 1600
    value, normalizer = th.tensor(-100 * bound, dtype=th.float64), model.value_normalizer
    push_critic_values(model, value.item() if normalizer is None else normalizer.normalize(value).item())
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


@pytest.mark.parametrize("value_normalization", [False, True], ids=["plain", "popart"])
def test_returns_too_large_for_the_critic_are_reported_without_popart_alone(
    monkeypatch: pytest.MonkeyPatch, value_normalization: bool
) -> None:
    """Pendulum's returns (up to about 1600) past a scale of 100: a plain critic must reach them, PopArt's targets not."""
    monkeypatch.setattr(MPO, "large_return_scale", 100.0)
    model = filled_model(value_normalization=value_normalization)
    found = warnings_about(model, "above 1e+02")
    assert len(found) == (0 if value_normalization else 1)


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


def test_kl_messages_name_the_bound_and_how_far_it_was_missed() -> None:
    assert health.loose_trust_region(9.9e-3, "epsilon_mean", 1e-3, factor=10.0, updates=1000, env_step=7) is None
    message = health.loose_trust_region(2.5e-2, "epsilon_mean", 1e-3, factor=10.0, updates=1000, env_step=7)
    assert message is not None and "epsilon_mean=0.001" in message and "median of 0.025" in message and "25 times" in message
    assert "last 1000 updates at env step 7" in message and "dual_learning_rate" in message
    excursion = health.trust_region_excursion(
        1.7, 2e-5, "epsilon_std", 1e-2, 100.0, update=9, env_step=7, actor_grad_norm=7654.0
    )
    assert excursion is not None and "reached 1.7 at update 9 (env step 7), 170 times" in excursion
    assert "gradient norm 7.65e+03" in excursion and "median over the last updates was 2e-05" in excursion
    assert (
        health.trust_region_excursion(0.99, 2e-5, "epsilon_std", 1e-2, 100.0, update=9, env_step=7, actor_grad_norm=3.0)
        is None
    )
    for kl in (0.0101, 0.1, 0.99):  # within a factor 10 of epsilon 0.1, either way
        assert health.e_step_off_bound(kl, 0.1, factor=10.0, updates=5, env_step=3, solved=True) is None
        assert health.e_step_off_bound(kl, 0.1, factor=10.0, updates=5, env_step=3, solved=False) is None
    # solved: below the bound the critic's values are tied, above it the Newton steps fell short
    assert "barely differ" in (health.e_step_off_bound(0.009, 0.1, 10.0, 5, 3, solved=True) or "")
    assert "temperature_iterations" in (health.e_step_off_bound(1.01, 0.1, 10.0, 5, 3, solved=True) or "")
    # a confident Discrete policy: a greedy E-step reaches only 0.02 < ε, so 0.01 is judged against that, 0.001 not met
    assert health.e_step_off_bound(0.01, 0.1, 3.0, 5, 3, solved=True, greedy_kl=0.02) is None
    assert health.e_step_off_bound(0.01, 0.1, 3.0, 5, 3, solved=True, greedy_kl=0.5) is not None
    assert "(at most 0.02, a greedy E-step's)" in (health.e_step_off_bound(0.001, 0.1, 3.0, 5, 3, True, greedy_kl=0.02) or "")
    # learned: the temperature is too low above the bound, too high below it
    assert "close to greedy" in (health.e_step_off_bound(1.01, 0.1, 10.0, 5, 3, solved=False) or "")
    assert "barely re-weights" in (health.e_step_off_bound(0.009, 0.1, 10.0, 5, 3, solved=False) or "")


def test_a_constraint_window_weighs_each_call_by_its_updates() -> None:
    """Three calls of 1, 3 and 1 gradient steps: the mean weighs each call's mean by its steps, the median and the peak
    read the calls' means."""
    window = health.ConstraintWindow(start=4)
    for kl, steps, update in ((1.0, 1, 5), (2.0, 3, 8), (50.0, 1, 9)):
        window.add({"kl_std": kl, "actor_grad_norm": kl * 10}, gradient_steps=steps, update=update, env_step=update * 10)
    assert window.n_updates == 5
    assert window.mean("kl_std") == pytest.approx((1.0 + 3 * 2.0 + 50.0) / 5)
    assert window.median("kl_std") == 2.0
    call = window.peak("kl_std")
    assert (window.values["kl_std"][call], window.updates[call], window.env_steps[call]) == (50.0, 9, 90)
    assert window.values["actor_grad_norm"][call] == 500.0


@pytest.mark.parametrize(
    "kwargs, env_id",
    [
        (dict(), "Pendulum-v1"),
        (dict(policy_improvement="parametric"), "Pendulum-v1"),
        (dict(epsilon_penalty=1e-3), "Pendulum-v1"),
        (dict(policy_kwargs=dict(net_arch=[16, 16])), "CartPole-v1"),
    ],
)
def test_the_bounds_are_those_of_the_logged_constraints(kwargs: dict, env_id: str) -> None:
    """Each constraint checked is one the update logs, bounded by the hyperparameter the check names."""
    model = MPO("MlpPolicy", env_id, seed=0, **{**SMALL, **kwargs})
    model.learn(200)
    model.train(1, model.batch_size)
    bounds = model.improvement.bounds()
    assert {f"train/{key}" for key in bounds} <= model.logger.name_to_value.keys()
    assert all(getattr(model, parameter) == bound for parameter, bound in bounds.values())
    expected = {"kl_mean_max", "kl_std_max"} if env_id == "Pendulum-v1" else {"kl_policy"}
    assert bounds.keys() == expected | ({"kl_q"} if kwargs.get("policy_improvement") != "parametric" else set())
    # the exact discrete E-step also logs how far a greedy one would reach, which the E-step's check reads
    assert ("train/kl_q_greedy" in model.logger.name_to_value) == (env_id == "CartPole-v1")


def test_a_trust_region_its_multiplier_cannot_hold_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bound of 1e-9 on KL(π_old || π)'s mean part: the policy's first steps leave it, and α_μ cannot follow."""
    monkeypatch.setattr(MPO, "health_check_interval", 2)
    model = filled_model(epsilon_mean=1e-9, learning_rate=1e-2)
    topic = "bounded by epsilon_mean=1e-09"
    assert warnings_about(model, topic, updates=2) == [], "judged the first interval, where the multipliers start"
    assert model.logger.name_to_value["train/kl_mean_max_excursions"] == 0, "counted in the first interval"
    (message,) = warnings_about(model, topic, updates=2)
    assert model.logger.name_to_value["train/kl_mean_max_excursions"] == 1
    assert "last 2 updates at env step 200" in message
    assert "dimension" not in message, "Pendulum-v1 has one action dimension, so one trust region per half"
    assert model.logger.name_to_value["train/kl_mean"] > MPO.trust_region_bound_factor * 1e-9
    assert warnings_about(model, topic, updates=4) == [], "warned a second time"


def test_a_few_updates_outside_a_held_trust_region_are_an_excursion_not_a_loose_multiplier(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three updates within ε_Σ = 1e-2, then one with the actor's standard deviation about 20 times its target's: the
    window's median stays within the bound, its largest update is far outside."""
    monkeypatch.setattr(MPO, "health_check_interval", 4)
    model = filled_model(epsilon_mean=1.0, epsilon_std=1e-2)
    model.train(4, model.batch_size)  # the first interval, not judged
    assert "train/kl_std_max_peak_ratio" not in model.logger.name_to_value, "no peak before the first judged call"
    for _ in range(3):
        assert warnings_about(model, "M-step", updates=1) == []
    with th.no_grad():
        model.actor.std.bias.add_(10.0)  # softplus: std about 10.5 against the target's 0.5
    (message,) = warnings_about(model, "M-step", updates=1)
    assert "bounded by epsilon_std=0.01 reached" in message and "at update 8 (env step 200)" in message
    assert model.logger.name_to_value["train/kl_std_max"] > MPO.trust_region_excursion_factor * 1e-2
    assert "gradient norm" in message and "actor_learning_rate" in message
    # every call beyond the factor is counted in the logs, where the warning is given once
    assert model.logger.name_to_value["train/kl_std_max_excursions"] == 1
    assert model.logger.name_to_value["train/kl_mean_max_excursions"] == 0
    # and the largest judged call, in multiples of its bound, stays logged after the policy is back
    peak = model.logger.name_to_value["train/kl_std_max_peak_ratio"]
    assert (
        peak == pytest.approx(model.logger.name_to_value["train/kl_std_max"] / 1e-2)
        and peak > MPO.trust_region_excursion_factor
    )
    with th.no_grad():
        model.actor.std.bias.sub_(10.0)
    model.train(1, model.batch_size)
    assert model.logger.name_to_value["train/kl_std_max"] < 1e-2 * MPO.trust_region_excursion_factor
    assert model.logger.name_to_value["train/kl_std_max_peak_ratio"] == peak


def test_per_dimension_trust_regions_are_judged_by_the_dimension_furthest_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """HalfCheetah-v5's six action dimensions with one trust region each (per_dim_constraints, the default), the first
    one's standard deviation moved away from its target's and the actor frozen (learning rate 1e-9): its KL is 60 times
    ε_Σ, so that trust region is not held, where the mean over the six dimensions stays within 30 times."""
    monkeypatch.setattr(MPO, "health_check_interval", 2)
    model = MPO("MlpPolicy", "HalfCheetah-v5", seed=0, **{**SMALL, "learning_rate": 1e-9})
    model.learn(200)
    with th.no_grad():
        model.actor.std.bias[0] += 1.0
    model.train(2, model.batch_size)  # the first interval, not judged
    largest = model.logger.name_to_value["train/kl_std_max"]
    model.epsilon_std = largest / 60
    (message,) = warnings_about(model, "M-step", updates=2)
    assert f"of the action dimension furthest out bounded by epsilon_std={largest / 60:.3g} had a median" in message
    assert model.logger.name_to_value["train/kl_std_max"] == pytest.approx(largest, rel=0.1)  # other states, same actor
    assert model.logger.name_to_value["train/kl_std"] < MPO.trust_region_bound_factor * model.epsilon_std


def test_the_health_window_excursion_count_and_peak_are_saved_with_the_model(tmp_path) -> None:
    """A model saved mid-window resumes it: its first interval stays unjudged and its calls so far count, as in a run
    trained in one go; the warnings it gave are not saved, so a loaded model gives them again."""
    from stable_baselines3.common.save_util import load_from_zip_file

    model = filled_model()
    model.train(3, model.batch_size)
    model._kl_excursions["kl_std_max"] = 2
    model._kl_peak_ratios["kl_std_max"] = 150.0
    model.save(tmp_path / "model")
    data, _, _ = load_from_zip_file(tmp_path / "model")
    assert "_warned" not in data and "_kl_window" in data
    loaded = MPO.load(tmp_path / "model", env=model.get_env())
    assert loaded._kl_excursions == {"kl_std_max": 2, "kl_mean_max": 0} and loaded._kl_peak_ratios == {"kl_std_max": 150.0}
    assert (loaded._kl_window.start, loaded._kl_window.n_updates) == (0, 3) and loaded._n_updates == 3
    assert loaded._kl_window.values["kl_std_max"] == model._kl_window.values["kl_std_max"]


def test_trust_regions_held_are_not_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same steps under wide bounds: the KLs stay below them and nothing is said."""
    monkeypatch.setattr(MPO, "health_check_interval", 2)
    model = filled_model(epsilon_mean=1.0, epsilon_std=1.0, learning_rate=1e-2)
    assert warnings_about(model, "M-step", updates=6) == []
    assert 0.0 < model.logger.name_to_value["train/kl_mean"] < 1.0


def test_tied_values_that_no_solved_temperature_can_re_weight_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A critic that outputs one value everywhere (its output layer's weights zero): KL(q || π_old) is 0."""
    monkeypatch.setattr(MPO, "health_check_interval", 1)
    model = filled_model()
    model.train(1, model.batch_size)  # the first interval, not judged
    push_critic_values(model, -5.0)
    (message,) = warnings_about(model, "KL(q || pi_old)", updates=1)
    assert "barely differ" in message and "epsilon=0.1" in message
    assert model.logger.name_to_value["train/kl_q"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("init_temperature, side", [(1e-6, "close to greedy"), (1e6, "barely re-weights")])
def test_a_learned_temperature_far_from_its_bound_is_reported(
    monkeypatch: pytest.MonkeyPatch, init_temperature: float, side: str
) -> None:
    """A learned η that its dual's gradient barely moves: near 0 the E-step picks each state's best sample (KL near
    log N = 3.0 over N = 20 samples), near ∞ it keeps the samples' uniform weights (KL near 0); ε = 0.1 either way."""
    monkeypatch.setattr(MPO, "health_check_interval", 1)
    model = filled_model(temperature_update="gradient", init_temperature=init_temperature, dual_learning_rate=1e-9)
    model.train(1, model.batch_size)  # the first interval, not judged
    (message,) = warnings_about(model, "KL(q || pi_old)", updates=1)
    assert side in message and "temperature_update='solve'" in message
    kl_q = model.logger.name_to_value["train/kl_q"]
    assert kl_q > 1.0 if init_temperature < 1 else kl_q < 0.01
