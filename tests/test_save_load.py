"""Save / load tests in the style of SB3's tests/test_save_load.py: nothing is lost between sessions."""

import re
import warnings

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.env_util import make_vec_env

from sb3_mpo import MPO, IncompatibleParametersError
from sb3_mpo.common.buffers import SegmentReplayBuffer
from sb3_mpo.mpo.policies import MlpPolicy

SMALL = dict(learning_starts=50, batch_size=32, n_action_samples=4, policy_kwargs=dict(net_arch=[32, 32]))


def optimizer_states_equal(first: th.optim.Optimizer, second: th.optim.Optimizer) -> bool:
    state_a, state_b = first.state_dict(), second.state_dict()
    if state_a["param_groups"] != state_b["param_groups"] or state_a["state"].keys() != state_b["state"].keys():
        return False
    for key, entry in state_a["state"].items():
        for name, value in entry.items():
            other = state_b["state"][key][name]
            if not (th.equal(value, other) if isinstance(value, th.Tensor) else value == other):
                return False
    return True


@pytest.fixture(scope="module")
def trained_model():
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, **SMALL)
    model.learn(200)
    return model


def test_save_load_identical_actions_and_state(trained_model, tmp_path):
    """save -> load restores the networks, the multipliers and every optimiser state exactly."""
    model = trained_model
    model.save(tmp_path / "mpo.zip")
    loaded = MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1))

    obs = np.stack([model.observation_space.sample() for _ in range(16)])
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])

    for name, value in model.policy.state_dict().items():
        assert th.equal(value, loaded.policy.state_dict()[name]), name
    for name, value in model.multipliers.state_dict().items():
        assert th.equal(value, loaded.multipliers.state_dict()[name]), name
    # The multipliers have moved away from their initial values, so a silent re-initialisation would be caught
    assert not np.isclose(loaded.multipliers.temperature.item(), 1.0)
    for attribute in ("actor", "critic"):
        assert optimizer_states_equal(getattr(model, attribute).optimizer, getattr(loaded, attribute).optimizer)
    assert optimizer_states_equal(model.multipliers_optimizer, loaded.multipliers_optimizer)
    assert loaded._n_updates == model._n_updates and loaded.num_timesteps == model.num_timesteps
    assert loaded.epsilon_mean == model.epsilon_mean and loaded.n_action_samples == model.n_action_samples


def test_crossqs_optimiser_survives_save_load_and_further_training(tmp_path):
    """The MuJoCo entry's optimiser (learning rate 1e-3, Adam's beta1 0.5 for actor and critic) is still in force after
    save, load and more updates; the duals keep Adam's defaults."""
    policy_kwargs = dict(net_arch=[32, 32], optimizer_kwargs=dict(betas=(0.5, 0.999)))
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, **{**SMALL, "learning_rate": 1e-3, "policy_kwargs": policy_kwargs})
    model.learn(100)
    model.save(tmp_path / "mpo.zip")
    loaded = MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1))
    loaded.learn(20, reset_num_timesteps=False)
    assert loaded._n_updates == model._n_updates + 20
    for optimizer in (loaded.actor.optimizer, loaded.critic.optimizer):
        for group in optimizer.param_groups:
            assert (group["lr"], group["betas"], group["fused"]) == (1e-3, (0.5, 0.999), True)
    assert loaded.multipliers_optimizer.param_groups[0]["betas"] == (0.9, 0.999)


def test_the_actors_own_optimiser_kwargs_survive_save_load_and_further_training(tmp_path):
    """actor_optimizer_kwargs replace the shared optimizer_kwargs in the actor's Adam alone, after save and load too."""
    policy_kwargs = dict(
        net_arch=[32, 32], optimizer_kwargs=dict(betas=(0.5, 0.999), eps=1e-6), actor_optimizer_kwargs=dict(betas=(0.5, 0.99))
    )
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, **{**SMALL, "policy_kwargs": policy_kwargs})
    model.learn(100)
    model.save(tmp_path / "mpo.zip")
    loaded = MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1))
    loaded.learn(20, reset_num_timesteps=False)
    assert loaded._n_updates == model._n_updates + 20
    settings = {"actor": ((0.5, 0.99), 1e-6, True), "critic": ((0.5, 0.999), 1e-6, True)}
    for name, expected in settings.items():
        optimizer = getattr(loaded, name).optimizer
        # the rebuilt optimiser's own defaults, which its loaded state does not overwrite, and the state's groups
        assert tuple(optimizer.defaults[key] for key in ("betas", "eps", "fused")) == expected, name
        for group in optimizer.param_groups:
            assert (group["betas"], group["eps"], group["fused"]) == expected, name
    # a policy saved and loaded alone keeps the option too
    model.policy.save(tmp_path / "policy.pkl")
    policy = MlpPolicy.load(tmp_path / "policy.pkl")
    assert policy.actor.optimizer.defaults["betas"] == (0.5, 0.99)
    assert policy.critic.optimizer.defaults["betas"] == (0.5, 0.999)


def test_the_actors_own_learning_rate_survives_save_load_and_custom_objects_replace_it(tmp_path):
    """
    A saved model trains its actor at its own rate after loading (a schedule too), its critic at ``learning_rate``, and
    ``custom_objects`` set either rate as they set SB3's ``learning_rate``.
    """
    model = MPO(
        "MlpPolicy",
        "Pendulum-v1",
        seed=0,
        learning_rate=1e-3,
        actor_learning_rate=lambda progress: 1e-4 * (1 + progress),
        **SMALL,
    )
    model.learn(100)
    model.save(tmp_path / "mpo.zip")

    def rates(loaded: MPO) -> tuple[float, float]:
        return loaded.actor.optimizer.param_groups[0]["lr"], loaded.critic.optimizer.param_groups[0]["lr"]

    env = make_vec_env("Pendulum-v1", n_envs=1)
    loaded = MPO.load(tmp_path / "mpo.zip", env=env)
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded._current_progress_remaining == 0.0  # the last update follows the last env step
    assert rates(loaded) == (pytest.approx(1e-4), pytest.approx(1e-3))
    assert loaded.actor_lr_schedule(1.0) == pytest.approx(2e-4)
    replaced = MPO.load(tmp_path / "mpo.zip", env=env, custom_objects={"actor_learning_rate": 2e-4, "learning_rate": 5e-4})
    replaced.learn(20, reset_num_timesteps=False)
    assert rates(replaced) == (pytest.approx(2e-4), pytest.approx(5e-4))
    unset = MPO.load(tmp_path / "mpo.zip", env=env, custom_objects={"actor_learning_rate": None})
    unset.learn(20, reset_num_timesteps=False)
    assert rates(unset) == (pytest.approx(1e-3), pytest.approx(1e-3))


def test_resume_training_continues(trained_model, tmp_path):
    """A loaded model (with its replay buffer) resumes training from where it stopped."""
    model = trained_model
    model.save(tmp_path / "mpo.zip")
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded = MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1))
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    assert loaded.replay_buffer.size() == model.replay_buffer.size()
    np.testing.assert_array_equal(loaded.replay_buffer.actions, model.replay_buffer.actions)

    n_updates = loaded._n_updates
    loaded.learn(60, reset_num_timesteps=False)
    assert loaded.num_timesteps == model.num_timesteps + 60
    assert loaded._n_updates == n_updates + 60  # learning_starts has passed: every step trains
    assert th.isfinite(loaded.multipliers.temperature)


def test_parameters_round_trip(trained_model):
    """get_parameters / set_parameters transfer networks, multipliers and optimisers to a fresh model."""
    fresh = MPO("MlpPolicy", "Pendulum-v1", seed=1, **SMALL)
    obs = np.stack([fresh.observation_space.sample() for _ in range(8)])
    assert not np.allclose(fresh.predict(obs, deterministic=True)[0], trained_model.predict(obs, deterministic=True)[0])
    params = trained_model.get_parameters()
    assert {"policy", "multipliers", "multipliers_optimizer", "actor.optimizer", "critic.optimizer"} <= params.keys()
    fresh.set_parameters(params)
    np.testing.assert_array_equal(fresh.predict(obs, deterministic=True)[0], trained_model.predict(obs, deterministic=True)[0])
    assert th.equal(fresh.multipliers.raw_alpha_mean, trained_model.multipliers.raw_alpha_mean)


def test_policy_save_load(trained_model, tmp_path):
    """The policy alone can be saved and loaded, as with SB3's policies."""
    trained_model.policy.save(tmp_path / "policy.pth")
    policy = MlpPolicy.load(tmp_path / "policy.pth")
    obs = np.stack([trained_model.observation_space.sample() for _ in range(8)])
    np.testing.assert_array_equal(
        policy.predict(obs, deterministic=True)[0], trained_model.predict(obs, deterministic=True)[0]
    )


def test_a_loaded_model_trains_its_multipliers_at_a_new_dual_learning_rate(tmp_path):
    """custom_objects sets the multipliers' learning rate, which the saved optimiser state would otherwise keep."""
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, **SMALL)
    model.learn(60)
    model.save(tmp_path / "mpo.zip")
    env = make_vec_env("Pendulum-v1", n_envs=1)
    loaded = MPO.load(tmp_path / "mpo.zip", env=env, custom_objects={"dual_learning_rate": 1e-4})
    loaded.learn(5, reset_num_timesteps=False)
    assert [group["lr"] for group in loaded.multipliers_optimizer.param_groups] == [1e-4]


def n_step_return_at(buffer: NStepReplayBuffer, index: int) -> float:
    """:return: The discounted reward sum SB3's n-step buffer samples for the stored step ``index`` (one environment)"""
    return float(buffer._get_samples(np.array([index])).rewards.item())


@pytest.mark.parametrize("how", ["second learn", "load and resume"])
def test_n_step_returns_do_not_join_the_episode_before_a_reset_to_the_one_after(tmp_path, how):
    """
    Pendulum's episodes last 200 steps: after 50 steps the stream of its newest episode breaks where training resumes
    on a reset environment. The n-step return from step 48 stops at step 49 (a time-limit truncation) instead of adding
    the reward of the next episode's first step.
    """
    settings = dict(SMALL, learning_starts=10**6)  # no update needed: this is about what replay stores
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, q_target="n_step", n_steps=3, **settings)
    model.learn(50)
    if how == "second learn":
        model.learn(10)  # SB3 resets the environment: a new episode starts
    else:
        model.save(tmp_path / "mpo.zip")
        model.save_replay_buffer(tmp_path / "buffer.pkl")
        model = MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1))
        model.load_replay_buffer(tmp_path / "buffer.pkl")
        model.learn(10, reset_num_timesteps=False)
    buffer = model.replay_buffer
    assert isinstance(buffer, NStepReplayBuffer) and buffer.pos == 60
    assert not np.allclose(buffer.next_observations[49, 0], buffer.observations[50, 0]), "the stream breaks at 49/50"
    assert buffer.dones[49, 0] == 1.0 and buffer.timeouts[49, 0] == 1.0, "a truncation: it keeps its bootstrap"
    rewards, gamma = buffer.rewards[:, 0], model.gamma
    assert n_step_return_at(buffer, 48) == pytest.approx(rewards[48] + gamma * rewards[49], rel=1e-6)
    assert n_step_return_at(buffer, 47) == pytest.approx(rewards[47] + gamma * rewards[48] + gamma**2 * rewards[49], rel=1e-6)
    assert n_step_return_at(buffer, 50) == pytest.approx(rewards[50] + gamma * rewards[51] + gamma**2 * rewards[52], rel=1e-6)


@pytest.mark.parametrize(
    "changed, found",
    [
        ({"epsilon_penalty": None}, r"size mismatch for raw_temperatures"),
        ({"temperature_update": "gradient"}, r"temperature_update='gradient'"),
        ({"policy_kwargs": dict(net_arch=[16, 16])}, r"size mismatch for actor"),
    ],
)
def test_loading_with_settings_that_reshape_the_saved_tensors_names_them(tmp_path, changed, found):
    """custom_objects that change a network's or the multipliers' shape: a clear error, not SB3's KeyError."""
    MPO("MlpPolicy", "Pendulum-v1", seed=0, **SMALL).save(tmp_path / "mpo.zip")
    with pytest.raises(
        IncompatibleParametersError, match=r"^MPO: the saved parameters do not fit this model \(policy_kwargs="
    ) as error:
        MPO.load(tmp_path / "mpo.zip", custom_objects=changed)
    assert re.search(found, str(error.value)), str(error.value)
    assert "cannot differ from the saved model's (custom_objects in MPO.load)" in str(error.value)


def test_a_categorical_critic_loaded_with_another_support_names_it(tmp_path):
    """
    critic_support changed at load with as many atoms: torch would load the saved atoms over the new ones without a
    word, and the critic would go on with the old support while the model says the new one.
    """
    categorical = dict(net_arch=[8], critic_support=(-10.0, 10.0), n_atoms=5)
    MPO("MlpPolicy", "Pendulum-v1", q_target="n_step", seed=0, **{**SMALL, "policy_kwargs": categorical}).save(
        tmp_path / "mpo.zip"
    )
    wider = {"policy_kwargs": {**categorical, "critic_support": (-100.0, 100.0)}}
    with pytest.raises(IncompatibleParametersError, match=r"atoms span \[-10, 10\], not policy_kwargs critic_support=\(-100"):
        MPO.load(tmp_path / "mpo.zip", custom_objects=wider)
    loaded = MPO.load(tmp_path / "mpo.zip")  # as saved
    assert loaded.critic.atoms.tolist() == [-10.0, -5.0, 0.0, 5.0, 10.0]


def test_a_replay_buffer_loaded_to_continue_its_episode_keeps_it_open(tmp_path):
    """truncate_last_traj=False: the environments' next steps continue the newest episode, which stays open."""
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, q_target="n_step", n_steps=3, **dict(SMALL, learning_starts=10**6))
    model.learn(50)
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    model.load_replay_buffer(tmp_path / "buffer.pkl", truncate_last_traj=False)
    assert model.replay_buffer.dones[49, 0] == 0.0 and model.replay_buffer.timeouts[49, 0] == 0.0
    model.load_replay_buffer(tmp_path / "buffer.pkl")
    assert model.replay_buffer.dones[49, 0] == 1.0 and model.replay_buffer.timeouts[49, 0] == 1.0


def test_n_step_model_loads_without_warning_and_keeps_its_buffer(tmp_path):
    """A saved n-step model reloads with the same NStepReplayBuffer and without SB3's 'n_steps is ignored' warning."""
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, q_target="n_step", n_steps=3, **SMALL)
    model.save(tmp_path / "mpo.zip")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*n_steps.*ignored")
        loaded = MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1))
    assert type(loaded.replay_buffer) is NStepReplayBuffer
    assert loaded.replay_buffer.n_steps == 3 and loaded.replay_buffer.gamma == model.gamma


@pytest.mark.parametrize(
    "saved, changed, buffer_class",
    [
        (dict(q_target="n_step", n_steps=3), {"gamma": 0.95}, NStepReplayBuffer),
        (dict(q_target="n_step", n_steps=3), {"n_steps": 5}, NStepReplayBuffer),
        (dict(q_target="n_step", n_steps=3), {"q_target": "retrace", "n_steps": 1}, SegmentReplayBuffer),
        ({}, {"segment_length": 4}, SegmentReplayBuffer),
        ({}, {"gamma": 0.95}, SegmentReplayBuffer),
        ({}, {"q_target": "n_step"}, ReplayBuffer),
    ],
)
def test_settings_that_shape_the_buffer_changed_at_load_build_the_buffer_a_new_model_would(
    tmp_path, saved, changed, buffer_class
):
    """The model keeps the buffer asked for, not the one resolved from its settings: a load that changes q_target,
    segment_length, n_steps or gamma builds the buffer those settings give, which then trains the critic."""
    MPO("MlpPolicy", "Pendulum-v1", seed=0, **saved, **SMALL).save(tmp_path / "mpo.zip")
    loaded = MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1), custom_objects=changed)
    fresh = MPO("MlpPolicy", "Pendulum-v1", seed=0, **{**saved, **changed}, **SMALL)
    assert type(loaded.replay_buffer) is type(fresh.replay_buffer) is buffer_class
    for setting in ("gamma", "n_steps", "segment_length"):
        assert getattr(loaded.replay_buffer, setting, None) == getattr(fresh.replay_buffer, setting, None), setting
    assert type(loaded.evaluation) is type(fresh.evaluation)
    loaded.learn(60, reset_num_timesteps=False)  # past learning_starts: the critic trains on that buffer
    assert loaded._n_updates > 0


@pytest.mark.parametrize(
    "saved, changed, message",
    [
        ({}, {"epsilon": 2.0}, r"^MPO: epsilon=2\.0 is invalid with n_action_samples=4, expected a float below log\(4\)"),
        ({}, {"n_steps": 3}, r"^MPO: n_steps=3 is invalid, expected 1 with q_target='retrace'"),
        ({}, {"batch_size": 0}, r"^MPO: batch_size=0 is invalid, expected"),
        (dict(q_target="n_step"), {"mixture_return_samples": 16}, r"^MPO: mixture_return_samples=16 is invalid"),
        ({}, {"penalty_cost": "l1"}, r"^MPO: penalty_cost='l1' is invalid, expected one of 'norm', 'squared_norm'"),
    ],
)
def test_a_load_refuses_settings_the_constructor_refuses(tmp_path, saved, changed, message):
    """custom_objects (and load's keyword arguments, as RL Zoo's -i passes an entry) are checked as constructor arguments."""
    MPO("MlpPolicy", "Pendulum-v1", seed=0, **saved, **SMALL).save(tmp_path / "mpo.zip")
    with pytest.raises(ValueError, match=message):
        MPO("MlpPolicy", "Pendulum-v1", **{**saved, **changed, **{k: v for k, v in SMALL.items() if k not in changed}})
    with pytest.raises(ValueError, match=message):
        MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1), custom_objects=changed)
    with pytest.raises(ValueError, match=message):
        MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1), **changed)


def test_the_action_penaltys_cost_survives_save_load(tmp_path):
    """A model saved with penalty_cost='norm' loads with it: on one batch its policy loss is the saved model's."""
    settings = {**SMALL, "policy_kwargs": dict(net_arch=[16], init_std=1.0)}  # wide samples, many outside the box
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, q_target="n_step", penalty_cost="norm", **settings)
    model.learn(SMALL["learning_starts"])
    model.save(tmp_path / "mpo.zip")
    loaded = MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1))
    assert loaded.penalty_cost == "norm"
    batch = model.evaluation.evaluate(model.replay_buffer.sample(model.batch_size)).improvement
    losses = [candidate.improvement.improve(batch)[0].item() for candidate in (model, loaded)]
    loaded.penalty_cost = "squared_norm"
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert loaded.improvement.improve(batch)[0].item() != pytest.approx(losses[0], rel=1e-3)


def test_a_model_loaded_to_act_takes_a_learning_rate_of_zero(tmp_path):
    """SB3's idiom for a model loaded only to act (RL Zoo's enjoy): learning_rate 0 in custom_objects is not refused."""
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, **SMALL)
    model.save(tmp_path / "mpo.zip")
    custom_objects = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0}
    loaded = MPO.load(tmp_path / "mpo.zip", env=make_vec_env("Pendulum-v1", n_envs=1), custom_objects=custom_objects)
    obs = np.stack([model.observation_space.sample() for _ in range(4)])
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_loading_popart_statistics_into_a_model_without_popart_names_the_setting(tmp_path):
    """value_normalization=False at load leaves the saved statistics nowhere to go: MPO's error, not an AttributeError."""
    MPO("MlpPolicy", "Pendulum-v1", seed=0, value_normalization=True, **SMALL).save(tmp_path / "mpo.zip")
    with pytest.raises(IncompatibleParametersError, match=r"expected value_normalization=True, as saved"):
        MPO.load(tmp_path / "mpo.zip", custom_objects={"value_normalization": False})


def test_loading_into_a_model_with_popart_parameters_saved_without_it_names_the_setting(tmp_path):
    """value_normalization=True at load, where the saved critic learned unnormalised values: MPO's error names it."""
    MPO("MlpPolicy", "Pendulum-v1", seed=0, **SMALL).save(tmp_path / "mpo.zip")
    with pytest.raises(IncompatibleParametersError, match=r"expected value_normalization=False, as saved"):
        MPO.load(tmp_path / "mpo.zip", custom_objects={"value_normalization": True})


def test_set_parameters_with_missing_objects_raises_sb3s_error(trained_model):
    """A dict without the optimisers' states: SB3's ValueError about the names, as SAC raises, not a settings error."""
    with pytest.raises(ValueError, match=r"Names of parameters do not match"):
        trained_model.set_parameters({"policy": trained_model.policy.state_dict()}, exact_match=True)
