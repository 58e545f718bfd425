"""Acme's LayerNormMLP input block and SimBa's residual torso as policy options: built into every network, trained, saved
and restored."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from torch import nn

from sb3_mpo import MPO
from sb3_mpo.mpo.policies import ResidualBlock, layer_norm_input_block, residual_torso

SMALL = dict(learning_starts=50, batch_size=32, n_action_samples=4)


def test_layer_norm_input_block_is_linear_layer_norm_tanh_then_the_activation():
    network = nn.Sequential(nn.Linear(3, 8), nn.ELU(), nn.Linear(8, 8), nn.ELU(), nn.Linear(8, 1))
    layer_norm_input_block(network)
    x = th.randn(5, 3)
    first = network[0](x)
    normalised = (first - first.mean(-1, keepdim=True)) / th.sqrt(first.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = network[4](nn.functional.elu(network[2](th.tanh(normalised))))
    th.testing.assert_close(network(x), expected)


@pytest.mark.parametrize(
    "policy, env",
    [
        ("MlpPolicy", "Pendulum-v1"),
        ("MlpPolicy", "CartPole-v1"),
        ("CnnPolicy", FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=False)),
        ("MultiInputPolicy", SimpleMultiObsEnv(random_start=False, discrete_actions=False)),
    ],
)
def test_layer_norm_networks_train_save_and_load(policy, env, tmp_path):
    kwargs = dict(net_arch=[16, 16], layer_norm=True, activation_fn=nn.ELU)
    if policy == "CnnPolicy":
        kwargs["features_extractor_kwargs"] = dict(features_dim=16)
    model = MPO(policy, env, seed=0, buffer_size=500, policy_kwargs=kwargs, **SMALL)
    networks = [model.actor, model.actor_target, model.critic, model.critic_target]
    assert all(sum(isinstance(module, nn.LayerNorm) for module in network.modules()) == 1 for network in networks)
    model.learn(100)
    model.save(tmp_path / "model.zip")
    loaded = MPO.load(tmp_path / "model.zip")
    for name, value in model.policy.state_dict().items():
        assert th.equal(value, loaded.policy.state_dict()[name]), name
    observation = model.observation_space.sample()
    np.testing.assert_array_equal(
        model.predict(observation, deterministic=True)[0], loaded.predict(observation, deterministic=True)[0]
    )


def layer_norm(x: th.Tensor) -> th.Tensor:
    """LayerNorm without its affine part, as a freshly built nn.LayerNorm computes it."""
    return (x - x.mean(-1, keepdim=True)) / th.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)


def test_residual_torso_is_embedding_residual_blocks_layer_norm_then_the_output_layer():
    network = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    output = network[4]
    residual_torso(network, nn.ReLU)
    embed, blocks = network[0], [network[1], network[2]]
    assert [type(layer) for layer in network] == [nn.Linear, ResidualBlock, ResidualBlock, nn.LayerNorm, nn.Linear]
    assert network[4] is output, "the output layer (e.g. a categorical critic's logits) is kept"
    x = th.randn(5, 3)
    hidden = embed(x)
    for block in blocks:
        inner, outer = block.mlp[1], block.mlp[3]
        assert (inner.in_features, inner.out_features) == (8, 32)
        hidden = hidden + outer(th.relu(inner(layer_norm(hidden))))
    th.testing.assert_close(network(x), output(layer_norm(hidden)))


def test_residual_torso_of_a_latent_network_ends_with_its_layer_norm():
    network = nn.Sequential(nn.Linear(3, 8), nn.ELU())  # an actor's latent network: no output layer
    residual_torso(network, nn.ELU)
    assert [type(layer) for layer in network] == [nn.Linear, ResidualBlock, nn.LayerNorm]


@pytest.mark.parametrize(
    "policy, env",
    [
        ("MlpPolicy", "Pendulum-v1"),
        ("MlpPolicy", "CartPole-v1"),
        ("CnnPolicy", FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=False)),
        ("MultiInputPolicy", SimpleMultiObsEnv(random_start=False, discrete_actions=False)),
    ],
)
def test_residual_networks_train_save_and_load(policy, env, tmp_path):
    kwargs = dict(net_arch=[16, 16], residual=True)
    if policy == "CnnPolicy":
        kwargs["features_extractor_kwargs"] = dict(features_dim=16)
    model = MPO(policy, env, seed=0, buffer_size=500, policy_kwargs=kwargs, **SMALL)
    networks = [model.actor, model.actor_target, model.critic, model.critic_target]
    assert all(sum(isinstance(module, ResidualBlock) for module in network.modules()) == 2 for network in networks)
    model.learn(100)
    model.save(tmp_path / "model.zip")
    loaded = MPO.load(tmp_path / "model.zip")
    for name, value in model.policy.state_dict().items():
        assert th.equal(value, loaded.policy.state_dict()[name]), name
    observation = model.observation_space.sample()
    np.testing.assert_array_equal(
        model.predict(observation, deterministic=True)[0], loaded.predict(observation, deterministic=True)[0]
    )


def test_residual_categorical_critic_keeps_its_logits_layer():
    policy_kwargs = dict(net_arch=[16, 16], residual=True, critic_support=(-5.0, 5.0), n_atoms=7)
    model = MPO("MlpPolicy", "Pendulum-v1", q_target="n_step", policy_kwargs=policy_kwargs, seed=0)
    assert model.critic.q_networks[0][-1].out_features == 7
    assert model.critic.sampled_q_values(th.randn(4, 3), th.zeros(2, 4, 1)).shape == (2, 4)


@pytest.mark.parametrize(
    "policy_kwargs, match",
    [
        (dict(residual=True, layer_norm=True), "residual=True is invalid with layer_norm=True"),
        (dict(residual=True, net_arch=[32, 16]), "net_arch=\\[32, 16\\] is invalid with residual=True"),
        (dict(residual=True, net_arch=dict(pi=[8], qf=[])), "is invalid with residual=True"),
    ],
)
def test_bad_residual_torsos_are_refused(policy_kwargs, match):
    with pytest.raises(ValueError, match=match):
        MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=policy_kwargs)
