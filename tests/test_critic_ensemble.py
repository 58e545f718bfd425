"""
An ensemble of critics (``policy_kwargs`` ``n_critics``): clipped double Q-learning's smallest value makes the targets
and the E-step's values, and every network regresses the same targets.
"""

import copy

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from torch.nn import functional as F

from sb3_mpo import MPO
from sb3_mpo.mpo import losses
from sb3_mpo.mpo.evaluation import PolicyEvaluation
from sb3_mpo.mpo.policies import MPOPolicy

SMALL = dict(learning_starts=64, batch_size=32, n_action_samples=4, buffer_size=500, seed=0)


def test_clipped_values_are_the_smallest_estimate_of_each_pair():
    values = th.randn(3, 4, 5)
    expected = th.tensor([[min(float(values[i, b, k]) for i in range(3)) for k in range(5)] for b in range(4)])
    th.testing.assert_close(losses.clipped_values(values), expected)
    th.testing.assert_close(losses.clipped_values(values[:1]), values[0])


def test_critic_regression_loss_sums_each_critics_mean_squared_error():
    q_values, targets = th.randn(7, 3), th.randn(7, 1)
    expected = sum(0.5 * F.mse_loss(q_values[:, i], targets[:, 0]) for i in range(3))
    th.testing.assert_close(losses.critic_regression_loss(q_values, targets), expected)
    # one critic: half its mean squared error, the loss of SB3's SAC for each of its critics
    th.testing.assert_close(
        losses.critic_regression_loss(q_values[:, :1], targets), 0.5 * F.mse_loss(q_values[:, :1], targets)
    )


def test_sampled_values_of_an_ensemble_are_the_smallest_of_its_networks():
    model = MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8], n_critics=3), seed=0)
    critic = model.critic
    observations, actions = th.randn(5, 3), th.rand(4, 5, 1) * 2 - 1
    per_network = th.stack(
        [
            th.stack([network(th.cat([observations, actions[j]], dim=-1)).squeeze(-1) for j in range(4)])
            for network in critic.q_networks
        ]
    )
    assert len(critic.q_networks) == 3 and not th.allclose(per_network[0], per_network[1])
    with th.no_grad():
        th.testing.assert_close(critic.sampled_q_values(observations, actions), per_network.amin(dim=0))


CONFIGURATIONS = {
    "retrace": dict(q_target="retrace", segment_length=4),
    "n_step": dict(q_target="n_step", n_steps=3),
    "crossq_retrace": dict(q_target="retrace", segment_length=4, policy_kwargs=dict(batch_renorm=True)),
    "crossq_n_step": dict(q_target="n_step", policy_kwargs=dict(batch_renorm=True)),
}


def models_of_each_network(kwargs: dict, n_critics: int) -> tuple[MPO, list[MPO]]:
    """An ensemble, with some replay, and one single-critic model per network of it, each holding that network."""
    policy_kwargs = {"net_arch": [16, 16], **kwargs.get("policy_kwargs", {})}
    ensemble = MPO(
        "MlpPolicy", "Pendulum-v1", **SMALL, **{**kwargs, "policy_kwargs": {**policy_kwargs, "n_critics": n_critics}}
    )
    ensemble.learn(SMALL["learning_starts"] + 40)
    singles = []
    for i in range(n_critics):
        single = MPO("MlpPolicy", "Pendulum-v1", **SMALL, **{**kwargs, "policy_kwargs": policy_kwargs})
        single.replay_buffer = ensemble.replay_buffer
        single.actor.load_state_dict(ensemble.actor.state_dict())
        single.actor_target.load_state_dict(ensemble.actor_target.state_dict())
        for online, source in ((single.critic, ensemble.critic), (single.critic_target, ensemble.critic_target)):
            online.q_networks[0].load_state_dict(source.q_networks[i].state_dict())
        singles.append(single)
    return ensemble, singles


def evaluate(model: MPO, replay_data, seed: int = 1) -> PolicyEvaluation:
    model.policy.set_training_mode(True)
    th.manual_seed(seed)  # the same sampled actions for every model
    return model.evaluation.evaluate(copy.deepcopy(replay_data))


def sample(model: MPO):
    batch_size = 8 if model.q_target == "retrace" else 32
    return model.replay_buffer.sample(batch_size, env=None)


@pytest.mark.parametrize("kwargs", CONFIGURATIONS.values(), ids=CONFIGURATIONS.keys())
def test_each_network_regresses_the_targets_of_the_smallest_value(kwargs):
    ensemble, singles = models_of_each_network(kwargs, n_critics=2)
    replay_data = sample(ensemble)
    evaluation = evaluate(ensemble, replay_data)
    alone = [evaluate(single, replay_data) for single in singles]
    # the E-step reads, and the targets are made of, the smallest of the two networks' values at the sampled actions
    th.testing.assert_close(
        evaluation.improvement.q_values, th.minimum(alone[0].improvement.q_values, alone[1].improvement.q_values)
    )

    # with two copies of one network, the ensemble's targets are that network's: each copy's loss is the single model's
    twin, single = ensemble, singles[0]
    for critic in (twin.critic, twin.critic_target):
        critic.q_networks[1].load_state_dict(critic.q_networks[0].state_dict())
    replay_data = sample(twin)
    twin_evaluation, single_evaluation = evaluate(twin, replay_data), evaluate(single, replay_data)
    th.testing.assert_close(twin_evaluation.critic_loss, 2.0 * single_evaluation.critic_loss)
    th.testing.assert_close(twin_evaluation.q_mean, single_evaluation.q_mean)
    th.testing.assert_close(twin_evaluation.improvement.q_values, single_evaluation.improvement.q_values)


@pytest.mark.parametrize("kwargs", CONFIGURATIONS.values(), ids=CONFIGURATIONS.keys())
def test_every_network_of_the_ensemble_trains(kwargs):
    policy_kwargs = {"net_arch": [16], **kwargs.get("policy_kwargs", {}), "n_critics": 2}
    model = MPO("MlpPolicy", "Pendulum-v1", **SMALL, **{**kwargs, "policy_kwargs": policy_kwargs})
    before = [copy.deepcopy(network.state_dict()) for network in model.critic.q_networks]
    model.learn(SMALL["learning_starts"] + 20)
    for network, old in zip(model.critic.q_networks, before, strict=True):
        assert all(not th.equal(value, old[name]) for name, value in network.state_dict().items() if value.is_floating_point())
    assert np.isfinite(model.logger.name_to_value["train/critic_loss"])


def test_an_ensemble_is_saved_and_restored(tmp_path):
    model = MPO("MlpPolicy", "Pendulum-v1", **SMALL, policy_kwargs=dict(net_arch=[16], n_critics=2, batch_renorm=True))
    model.learn(SMALL["learning_starts"] + 10)
    model.save(tmp_path / "model.zip")
    loaded = MPO.load(tmp_path / "model.zip")
    assert loaded.policy.critic_kwargs["n_critics"] == 2 and len(loaded.critic.q_networks) == 2
    for network, restored in zip(model.critic.q_networks, loaded.critic.q_networks, strict=True):
        for (name, value), restored_value in zip(network.state_dict().items(), restored.state_dict().values(), strict=True):
            th.testing.assert_close(restored_value, value, msg=name)
    observations = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    np.testing.assert_allclose(
        loaded.predict(observations, deterministic=True)[0], model.predict(observations, deterministic=True)[0]
    )


@pytest.mark.parametrize(
    "env, policy_kwargs, match",
    [
        ("Pendulum-v1", dict(n_critics=0), r"n_critics=0 is invalid, expected an integer >= 1"),
        ("Pendulum-v1", dict(n_critics=True), r"policy_kwargs\['n_critics'\]=True is invalid, expected int"),
        ("Pendulum-v1", dict(n_critics=2.0), r"policy_kwargs\['n_critics'\]=2.0 is invalid, expected int"),
        ("CartPole-v1", dict(n_critics=2), r"n_critics=2 is invalid with a Discrete action space, expected 1"),
        ("Pendulum-v1", dict(n_critics=2, critic_support=(-10.0, 0.0)), r"n_critics=2 is invalid with a distributional"),
        ("Pendulum-v1", dict(n_critics=2, critic_mixture=5), r"n_critics=2 is invalid with a distributional"),
    ],
)
def test_bad_ensembles_are_refused(env, policy_kwargs, match):
    with pytest.raises(ValueError, match=match):
        MPO("MlpPolicy", env, q_target="n_step", policy_kwargs=policy_kwargs)


def test_a_policy_alone_refuses_a_bad_ensemble():
    box = spaces.Box(-1.0, 1.0, (2,))
    with pytest.raises(ValueError, match=r"MPOPolicy: n_critics=-1 is invalid"):
        MPOPolicy(box, box, lambda _: 1e-3, n_critics=-1)
    assert len(MPOPolicy(box, box, lambda _: 1e-3, n_critics=2).critic.q_networks) == 2
    # a NumPy integer, as MPO's own checks accept (e.g. from an Optuna or YAML pipeline)
    assert len(MPOPolicy(box, box, lambda _: 1e-3, n_critics=np.int64(3)).critic.q_networks) == 3
    with pytest.raises(ValueError, match=r"MPOPolicy: n_critics=True is invalid"):
        MPOPolicy(box, box, lambda _: 1e-3, n_critics=True)
