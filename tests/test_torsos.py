"""Acme's LayerNormMLP input block, SimBa's residual torso and CrossQ's BatchRenorm critic as policy options: built into
their networks, trained, saved and restored."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch as th
from sb3_contrib.common.torch_layers import BatchRenorm1d
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from torch import nn

from sb3_mpo import MPO
from sb3_mpo.mpo.torsos import (
    ResidualBlock,
    SharedBatchRenorm,
    batch_renorm_torso,
    layer_norm_input_block,
    linear_float32,
    modules_in,
    residual_torso,
    sigmoid_tanh,
    tanh_blocks_as_sigmoid,
    with_batch_statistics,
)

SMALL = dict(learning_starts=50, batch_size=32, n_action_samples=4)


def test_layer_norm_input_block_is_linear_layer_norm_tanh_then_the_activation():
    network = nn.Sequential(nn.Linear(3, 8), nn.ELU(), nn.Linear(8, 8), nn.ELU(), nn.Linear(8, 1))
    layer_norm_input_block(network)
    x = th.randn(5, 3)
    first = network[0](x)
    normalised = (first - first.mean(-1, keepdim=True)) / th.sqrt(first.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = network[4](nn.functional.elu(network[2](th.tanh(normalised))))
    th.testing.assert_close(network(x), expected)


def test_sigmoid_tanh_is_tanh_and_leaves_autograd_to_torch():
    x = th.cat([th.linspace(-30.0, 30.0, 2001), th.randn(5000), th.tensor([0.0, 1e-8, -1e-8, 80.0, -80.0])])
    th.testing.assert_close(sigmoid_tanh(x), th.tanh(x.double()).float(), rtol=0, atol=3e-7)
    assert sigmoid_tanh(x).abs().max() <= 1.0
    graded = x[:100].clone().requires_grad_()
    sigmoid_tanh(graded).sum().backward()  # the in-place form would break this backward pass
    th.testing.assert_close(graded.grad, 1 - th.tanh(x[:100]) ** 2)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_tanh_blocks_as_sigmoid_compute_the_block_and_leave_other_layers(affine: bool, bias: bool) -> None:
    """LayerNorm → tanh → Linear rewritten as LayerNorm·2 → σ in place → (2W, b − W·1): the same outputs, by float64 torch."""
    th.manual_seed(0)
    norm, linear = nn.LayerNorm(8, elementwise_affine=affine), nn.Linear(8, 5, bias=bias)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    layers = [nn.ELU(), norm, nn.Tanh(), linear, nn.Tanh()]  # the last tanh feeds no Linear: left alone
    rewritten = tanh_blocks_as_sigmoid(layers)
    assert rewritten[0] is layers[0] and rewritten[-1] is layers[-1] and len(rewritten) == len(layers)
    assert [type(layer).__name__ for layer in rewritten[1:4]] == ["ScaledLayerNorm", "InPlaceSigmoid", "FoldedLinear"]
    x = th.randn(3, 7, 8) * 4
    with th.no_grad():
        expected = nn.Sequential(*layers).double()(x.double())
        th.testing.assert_close(modules_in(th.float32, rewritten, x), expected.float(), rtol=1e-5, atol=2e-6)
    assert tanh_blocks_as_sigmoid([norm, nn.Tanh(), nn.ELU()])[1].__class__ is nn.Tanh  # no Linear after it


def test_linear_float32_without_gradient_adds_the_bias_in_place_and_keeps_autograd() -> None:
    layer, x = nn.Linear(6, 4), th.randn(2, 9, 6)
    with th.no_grad():
        th.testing.assert_close(linear_float32(layer, x), layer(x))
        th.testing.assert_close(linear_float32(nn.Linear(6, 4, bias=False), x).shape, th.Size([2, 9, 4]))
    graded = x.clone().requires_grad_()
    linear_float32(layer, graded).sum().backward()
    th.testing.assert_close(graded.grad, layer.weight.sum(0).expand_as(x))


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


def small_policy_kwargs(policy: str, **torso: object) -> dict[str, object]:
    """:return: policy_kwargs for a small network of ``policy`` with the torso options ``torso``"""
    kwargs: dict[str, object] = dict(net_arch=[16, 16], **torso)
    if policy == "CnnPolicy":
        kwargs["features_extractor_kwargs"] = dict(features_dim=16)
    return kwargs


def assert_saved_and_restored(model: MPO, path: Path) -> MPO:
    """Save ``model`` and load it back: the same parameters and statistics, the same deterministic action.

    :return: The loaded model
    """
    model.save(path)
    loaded = MPO.load(path)
    for name, value in model.policy.state_dict().items():
        assert th.equal(value, loaded.policy.state_dict()[name]), name
    observation = model.observation_space.sample()
    np.testing.assert_array_equal(
        model.predict(observation, deterministic=True)[0], loaded.predict(observation, deterministic=True)[0]
    )
    return loaded


#: torso -> (its policy_kwargs, the module it adds and how many of them each network holds with two hidden layers)
TORSOS = {
    "layer_norm": (dict(layer_norm=True, activation_fn=nn.ELU), nn.LayerNorm, 1),
    "residual": (dict(residual=True), ResidualBlock, 2),
}


@pytest.mark.parametrize("torso", TORSOS)
@pytest.mark.parametrize(
    "policy, env",
    [
        ("MlpPolicy", "Pendulum-v1"),
        ("MlpPolicy", "CartPole-v1"),
        ("CnnPolicy", FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=False)),
        ("MultiInputPolicy", SimpleMultiObsEnv(random_start=False, discrete_actions=False)),
    ],
)
def test_torsos_train_save_and_load(torso, policy, env, tmp_path):
    torso_kwargs, module_type, count = TORSOS[torso]
    model = MPO(policy, env, seed=0, buffer_size=500, policy_kwargs=small_policy_kwargs(policy, **torso_kwargs), **SMALL)
    networks = [model.actor, model.actor_target, model.critic, model.critic_target]
    assert all(sum(isinstance(module, module_type) for module in network.modules()) == count for network in networks)
    model.learn(100)
    assert_saved_and_restored(model, tmp_path / "model.zip")


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


# === CrossQ's critic: BatchRenorm, no target critic ===


@pytest.mark.parametrize("warmup_steps", [100, 2])
def test_shared_batch_renorm_normalises_as_sb3_contribs_layer(warmup_steps):
    """Batch statistics during the warm-up, renormalised ones after it (clipped r and d), running ones in evaluation."""
    reference = BatchRenorm1d(4, momentum=0.1, warmup_steps=warmup_steps)
    layer = SharedBatchRenorm(4, momentum=0.1, warmup_steps=warmup_steps)
    generator = th.Generator().manual_seed(0)
    with th.no_grad():
        for module in (reference, layer):
            module.scale.copy_(th.tensor([0.5, 1.0, 2.0, 3.0]))
            module.bias.copy_(th.tensor([0.1, -0.2, 0.3, 0.0]))
    for step in range(6):
        x = 3.0 * th.randn(32, 4, generator=generator) + step  # a drifting input, so that r and d move off 1 and 0
        th.testing.assert_close(layer(x), reference(x))
        for name in ("ra_mean", "ra_var", "steps"):
            th.testing.assert_close(getattr(layer, name), getattr(reference, name))
    layer.eval(), reference.eval()
    x = th.randn(8, 4, generator=generator)
    th.testing.assert_close(layer(x), reference(x))


@pytest.mark.parametrize("warmup_steps", [100, 0])
def test_a_feature_constant_over_the_batch_gets_finite_gradients_and_sb3_contribs_outputs(warmup_steps):
    """
    An action clipped at its bound in every row, or a saturated unit, is a feature with no variance in the batch:
    after the warm-up, sb3-contrib's layer back-propagates NaN through √var there; this one gives its outputs, with
    finite gradients equal to the float64 gradients of the same normalisation with that feature's √var held at 0.
    """
    generator = th.Generator().manual_seed(1)
    x = th.randn(16, 3, generator=generator, dtype=th.float64)
    x[:, 1] = 1.0
    weights = th.randn(16, 3, generator=generator, dtype=th.float64)
    layer = SharedBatchRenorm(3, warmup_steps=warmup_steps).double()
    reference = BatchRenorm1d(3, warmup_steps=warmup_steps).double()
    for module in (layer, reference):  # running statistics away from the batch's, so that d is not 0
        module.ra_mean.fill_(0.3), module.ra_var.fill_(2.0), module.steps.fill_(1)
    inputs = x.clone().requires_grad_()
    outputs = layer(inputs)
    th.testing.assert_close(outputs, reference(x))
    (outputs * weights).sum().backward()
    assert th.isfinite(inputs.grad).all()

    # the same normalisation written out, √var of the constant feature a constant 0
    manual = x.clone().requires_grad_()
    mean, var = manual.mean(dim=0), manual.var(dim=0)
    std, running_std = (var + layer.eps).sqrt(), th.tensor(2.0 + layer.eps, dtype=th.float64).sqrt()
    if warmup_steps == 0:
        r = (std / running_std).detach().clamp(1 / layer.rmax, layer.rmax)
        d = ((mean - 0.3) / running_std).detach().clamp(-layer.dmax, layer.dmax)
        root = th.stack([var[0].sqrt(), var.new_zeros(()), var[2].sqrt()])
        mean, var = mean - d * root / r, var / r**2
    normalised = (manual - mean) / (var + layer.eps).sqrt()
    (normalised * weights).sum().backward()
    th.testing.assert_close(inputs.grad, manual.grad)


def test_batch_renorm_torso_puts_a_batch_renorm_before_every_linear_layer():
    network = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    linears = [network[0], network[2], network[4]]
    batch_renorm_torso(network, momentum=0.01, warmup_steps=10)
    kinds = [type(module) for module in network]
    assert kinds == [
        SharedBatchRenorm,
        nn.Linear,
        nn.ReLU,
        SharedBatchRenorm,
        nn.Linear,
        nn.ReLU,
        SharedBatchRenorm,
        nn.Linear,
    ]
    assert [network[1], network[4], network[7]] == linears
    assert [network[index].num_features for index in (0, 3, 6)] == [3, 8, 8]


def crossq_network() -> nn.Sequential:
    network = nn.Sequential(nn.Linear(3, 8), nn.ELU(), nn.Linear(8, 1))
    batch_renorm_torso(network, momentum=0.01, warmup_steps=100)
    return network


def unfoldable_network() -> nn.Sequential:
    """Normalisations that no Linear layer follows directly: one before an activation, one last."""
    return nn.Sequential(nn.Linear(3, 8), SharedBatchRenorm(8), nn.Tanh(), nn.Linear(8, 2), SharedBatchRenorm(2))


@pytest.mark.parametrize("build", [crossq_network, unfoldable_network])
def test_other_rows_are_normalised_with_the_graded_rows_statistics(build):
    network = build()
    graded, scored = th.randn(16, 3), 5.0 + 2.0 * th.randn(40, 3)  # the scored rows alone would normalise otherwise
    reference = copy.deepcopy(network)
    graded_out, fixed_layers = with_batch_statistics(network, graded)
    # the graded rows: the network's own training-mode forward, which moves the running statistics the same way
    th.testing.assert_close(graded_out, reference(graded))
    for moved, expected in zip(network, reference, strict=True):
        if isinstance(moved, SharedBatchRenorm):
            th.testing.assert_close(moved.ra_mean, expected.ra_mean)
            th.testing.assert_close(moved.ra_var, expected.ra_var)
    # other rows: each normalisation uses the mean and (unbiased) variance of the graded rows at that layer
    g, s = graded, scored
    for layer in reference:
        if isinstance(layer, SharedBatchRenorm):
            mean, var = g.mean(0), g.var(0)
            g, s = ((x - mean) / th.sqrt(var + layer.eps) for x in (g, s))  # freshly built: scale 1, bias 0
        else:
            g, s = layer(g), layer(s)
    assert graded_out.requires_grad
    assert not any(tensor.requires_grad for layer in fixed_layers if isinstance(layer, tuple) for tensor in layer)
    th.testing.assert_close(modules_in(th.float32, fixed_layers, scored), s.detach())
    # in bfloat16 the products (the normalisations folded into them) stay within its rounding
    th.testing.assert_close(modules_in(th.bfloat16, fixed_layers, scored), s.detach(), rtol=0.05, atol=0.05)


def test_next_states_left_out_of_the_statistics_change_nothing_but_their_own_scores():
    model = MPO("MlpPolicy", "Pendulum-v1", q_target="n_step", policy_kwargs=dict(net_arch=[8], batch_renorm=True), seed=0)
    critic = model.critic
    obs, actions, next_obs, next_actions = th.randn(5, 3), th.rand(5, 1), th.randn(6, 3), th.rand(4, 6, 1)
    keep = th.tensor([True, False, True, True, False, True])
    masked = copy.deepcopy(critic).joint_outputs(obs, actions, next_obs, next_actions, in_statistics=keep)
    removed = critic.joint_outputs(obs, actions, next_obs[keep], next_actions[:, keep])
    th.testing.assert_close(masked[0], removed[0])
    th.testing.assert_close(masked[1][:, keep], removed[1])
    # the sampled actions' factored pass is the normalised network over each [next state, action] row
    graded = th.cat([th.cat([obs, actions], dim=-1), th.cat([next_obs, next_actions[0]], dim=-1)])
    _, fixed_layers = with_batch_statistics(copy.deepcopy(critic).q_networks[0], graded)
    rows = th.cat([next_obs.expand(4, -1, -1), next_actions], dim=-1)
    th.testing.assert_close(
        critic.joint_outputs(obs, actions, next_obs, next_actions)[1], modules_in(th.float32, fixed_layers, rows)
    )


def test_sampled_actions_of_a_crossq_critic_are_scored_as_in_evaluation_mode():
    model = MPO("MlpPolicy", "Pendulum-v1", q_target="n_step", policy_kwargs=dict(net_arch=[8], batch_renorm=True), seed=0)
    critic = model.critic
    for _ in range(3):  # running statistics away from their initial (0, 1)
        critic.joint_outputs(3.0 + th.randn(16, 3), th.rand(16, 1), th.randn(16, 3), th.rand(2, 16, 1))
    observations, actions = th.randn(5, 3), th.rand(4, 5, 1) * 2 - 1
    sampled = critic.sampled_q_values(observations, actions)
    critic.set_training_mode(False)
    th.testing.assert_close(sampled, th.stack([critic(observations, actions[j])[0].squeeze(-1) for j in range(4)]))


@pytest.mark.parametrize(
    "policy, env, q_target",
    [
        ("MlpPolicy", "Pendulum-v1", "retrace"),
        ("MlpPolicy", "Pendulum-v1", "n_step"),
        ("CnnPolicy", FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=False), "n_step"),
        ("MultiInputPolicy", SimpleMultiObsEnv(random_start=False, discrete_actions=False), "retrace"),
    ],
)
def test_batch_renorm_critic_trains_without_its_target_and_is_saved_and_restored(policy, env, q_target, tmp_path):
    kwargs = small_policy_kwargs(policy, layer_norm=True, activation_fn=nn.ELU, batch_renorm=True)
    model = MPO(policy, env, seed=0, buffer_size=500, q_target=q_target, policy_kwargs=kwargs, **SMALL)
    critic_layers = [module for module in model.critic.modules() if isinstance(module, SharedBatchRenorm)]
    assert len(critic_layers) == 3  # before each Linear layer of the critic's MLP
    assert not any(isinstance(module, SharedBatchRenorm) for module in model.actor.modules())
    critic_target = copy.deepcopy(model.critic_target.state_dict())
    actor_target = copy.deepcopy(model.actor_target.state_dict())
    model.learn(100)
    assert model._n_updates > 0
    # one training-mode pass of the critic per update: the running statistics moved once per gradient step
    assert all(int(layer.steps) == model._n_updates for layer in critic_layers)
    assert all(th.equal(value, model.critic_target.state_dict()[name]) for name, value in critic_target.items())
    assert not all(th.equal(value, model.actor_target.state_dict()[name]) for name, value in actor_target.items())
    assert assert_saved_and_restored(model, tmp_path / "model.zip").policy.batch_renorm


@pytest.mark.parametrize(
    "env, kwargs, policy_kwargs, match",
    [
        ("CartPole-v1", dict(q_target="n_step"), {}, "batch_renorm=True is invalid with a Discrete action space"),
        ("Pendulum-v1", {}, dict(residual=True), "batch_renorm=True is invalid with residual=True"),
        ("Pendulum-v1", dict(value_normalization=True), {}, "value_normalization=True is invalid"),
        ("Pendulum-v1", dict(policy_improvement="parametric"), {}, "policy_improvement='parametric' is invalid"),
        ("Pendulum-v1", dict(compile_update=True), {}, "compile_update=True is invalid"),
        (
            "Pendulum-v1",
            {},
            dict(batch_norm_momentum=0.0),
            r"\['batch_norm_momentum'\]=0.0 is invalid, expected a float in \(",
        ),
        ("Pendulum-v1", {}, dict(renorm_warmup_steps=-1), r"\['renorm_warmup_steps'\]=-1 is invalid, expected a non-negative"),
    ],
)
def test_bad_batch_renorm_critics_are_refused(env, kwargs, policy_kwargs, match):
    with pytest.raises(ValueError, match=match):
        MPO("MlpPolicy", env, policy_kwargs=dict(batch_renorm=True, **policy_kwargs), **kwargs)
