"""Acme's LayerNormMLP input block as a policy option: built into every network, trained, saved and restored."""

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from torch import nn

from sb3_mpo import MPO
from sb3_mpo.mpo.policies import layer_norm_input_block

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
