"""``target_precision``: the target critic's pass over the sampled actions with bfloat16 hidden layers."""

from pathlib import Path
from typing import Any

import pytest
import torch as th
from torch import nn

from sb3_mpo import MPO
from sb3_mpo.common import precision as hardware
from sb3_mpo.mpo.policies import SampledCritic
from sb3_mpo.mpo.torsos import linear_as, modules_in


def small_model(**kwargs: Any) -> MPO:
    # learning_starts above the steps taken: learn() only fills the buffer, the test runs the updates itself
    model = MPO(
        "MlpPolicy",
        kwargs.pop("env", "Pendulum-v1"),
        learning_starts=10_000,
        batch_size=64,
        q_target="n_step",
        seed=0,
        **kwargs,
    )
    model.learn(300)
    return model


def sampled_batch(critic: SampledCritic, n_samples: int = 20, n_states: int = 64) -> tuple[th.Tensor, th.Tensor]:
    generator = th.Generator().manual_seed(0)
    obs_dim = critic.features_extractor.features_dim
    action_dim = critic.q_networks[0][0].in_features - obs_dim
    observations = th.randn(n_states, obs_dim, generator=generator)
    actions = th.rand(n_samples, n_states, action_dim, generator=generator) * 2 - 1
    return observations, actions


def test_linear_as_bfloat16_is_the_rounded_layer_up_to_one_rounding_of_its_output() -> None:
    """Against float64 arithmetic on the bfloat16-rounded inputs, weight and bias: one bfloat16 rounding apart."""
    generator = th.Generator().manual_seed(0)
    layer = nn.Linear(64, 32)
    inputs = th.randn(100, 64, generator=generator)
    raw = linear_as(th.bfloat16, layer, inputs)
    assert raw.dtype == th.bfloat16  # left in the type it ran in
    result = raw.float()
    rounded = [tensor.detach().to(th.bfloat16).double() for tensor in (inputs, layer.weight, layer.bias)]
    reference = th.nn.functional.linear(*rounded)
    assert th.all((result.double() - reference).abs() <= 2.0**-8 * reference.abs() + 1e-6)
    assert not th.equal(result, layer(inputs)), "the product ran in float32"
    assert th.equal(linear_as(th.float32, layer, inputs), layer(inputs))


@pytest.mark.parametrize(
    "policy_kwargs",
    [{}, {"layer_norm": True, "activation_fn": nn.ELU}, {"net_arch": [64, 64, 64]}, {"residual": True}],
    ids=["relu", "layer_norm_elu", "three_layers", "residual"],
)
def test_bfloat16_hidden_layers_give_float32_outputs_close_to_the_float32_pass(policy_kwargs: dict[str, Any]) -> None:
    """The outputs stay float32 and differ from the float32 pass by bfloat16 roundings of the hidden activations."""
    critic = small_model(policy_kwargs=policy_kwargs).critic_target
    assert isinstance(critic, SampledCritic)
    observations, actions = sampled_batch(critic)
    with th.no_grad():
        exact = critic.sampled_outputs(observations, actions)
        mixed = critic.sampled_outputs(observations, actions, th.bfloat16)
    assert mixed.dtype == th.float32 and mixed.shape == exact.shape
    assert not th.equal(mixed, exact), "the bfloat16 path computed in float32"
    error = (mixed - exact).abs()
    # relative to the outputs' own spread over the sampled actions, the error is small
    spread = exact.std(dim=0).mean()
    assert error.mean() < 0.05 * spread, (error.mean(), spread)
    assert error.max() < 0.25 * spread, (error.max(), spread)


@pytest.mark.parametrize("inplace", [False, True], ids=["", "inplace"])  # the critic's own are in place
@pytest.mark.parametrize("activation_fn", [nn.ReLU, nn.ELU])
def test_activations_between_bfloat16_layers_stay_bfloat16_and_the_last_one_float32(
    activation_fn: type[nn.Module], inplace: bool
) -> None:
    """Against the layer-by-layer pass (each product's output back in float32, every activation in float32): with
    ReLU, which commutes with rounding, no bit differs; with ELU, rounded to bfloat16 before the next layer rounds its
    inputs anyway, the error against the float32 network grows by less than half (torch computes ELU on bfloat16 in
    float32 and rounds once, so on this project's CPU no bit differs either). The last activation and everything
    after it are float32."""
    generator = th.Generator().manual_seed(0)
    layers = [nn.Linear(16, 64), activation_fn(inplace=inplace), nn.Linear(64, 64), activation_fn(inplace=inplace)]
    layers += [nn.Linear(64, 32), activation_fn(inplace=inplace)]
    inputs = th.randn(500, 16, generator=generator)
    received: list[th.dtype] = []
    with th.no_grad():
        exact = nn.Sequential(*layers)(inputs.clone())
        hooks = [layer.register_forward_pre_hook(lambda _, args: received.append(args[0].dtype)) for layer in layers[1::2]]
        modules_in(th.bfloat16, layers, inputs)
        for hook in hooks:
            hook.remove()
        assert received == [th.bfloat16, th.bfloat16, th.float32], "between two products in bfloat16, the last in float32"
        reference = inputs
        for layer in layers:
            reference = linear_as(th.bfloat16, layer, reference).float() if isinstance(layer, nn.Linear) else layer(reference)
        kept = modules_in(th.bfloat16, [nn.Sequential(*layers[:2]), *layers[2:]], inputs)  # nested containers opened
        # the last activation in float32, on the last product's output
        th.testing.assert_close(kept, activation_fn()(modules_in(th.bfloat16, layers[:-1], inputs)), rtol=0, atol=0)
        th.testing.assert_close(modules_in(th.float32, layers, inputs), exact, rtol=1e-6, atol=1e-6)
    assert kept.dtype == th.float32
    if activation_fn is nn.ReLU:
        assert th.equal(kept, reference)
    kept_error, reference_error = (kept - exact).abs(), (reference - exact).abs()
    assert kept_error.mean() < 1.5 * reference_error.mean() and kept_error.max() < 1.5 * reference_error.max()


@pytest.mark.parametrize(
    "policy_kwargs",
    [{}, {"residual": True}, {"layer_norm": True, "activation_fn": nn.ELU}, {"layer_norm": True, "net_arch": [16]}],
    ids=["relu", "residual", "layer_norm", "layer_norm_one_hidden_layer"],
)
def test_float32_is_the_default_and_matches_the_full_forward_pass(policy_kwargs: dict[str, Any]) -> None:
    critic = small_model(policy_kwargs=policy_kwargs).critic_target
    assert isinstance(critic, SampledCritic)
    observations, actions = sampled_batch(critic, n_samples=3, n_states=5)
    with th.no_grad():
        sampled = critic.sampled_outputs(observations, actions)
        full = th.stack([critic(observations, sample)[0] for sample in actions])
    th.testing.assert_close(sampled, full, rtol=1e-5, atol=1e-6)


def test_bfloat16_update_stays_close_to_the_float32_update() -> None:
    """One update's losses from the same batch and random draws: bfloat16 moves them by a fraction of a percent."""
    model = small_model()
    th.manual_seed(1)
    batch = model.replay_buffer.sample(model.batch_size)
    results = {}
    for precision in ("float32", "bfloat16"):
        model.target_precision = precision
        th.manual_seed(2)
        critic_loss, policy_loss, _, diagnostics = model._losses(batch)
        results[precision] = (critic_loss, policy_loss, diagnostics["kl_q"], diagnostics["temperature"])
    for exact, mixed in zip(results["float32"], results["bfloat16"], strict=True):
        th.testing.assert_close(mixed, exact, rtol=2e-2, atol=1e-4)
    assert not th.equal(results["bfloat16"][0], results["float32"][0]), "the critic's targets ignored target_precision"


def test_target_precision_survives_save_and_load(tmp_path: Path) -> None:
    model = small_model(target_precision="bfloat16")
    model.save(tmp_path / "model.zip")
    loaded = MPO.load(tmp_path / "model.zip")
    assert loaded.target_precision == "bfloat16"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"env": "Pendulum-v1", "target_precision": "float16"}, "target_precision='float16'.*'bfloat16'"),
        ({"env": "Pendulum-v1", "target_precision": th.bfloat16}, "target_precision"),
        ({"env": "CartPole-v1", "target_precision": "bfloat16"}, "target_precision='bfloat16' is invalid with a Discrete"),
        ({"env": "Pendulum-v1", "target_precision": "Auto"}, "'float32', 'bfloat16', 'auto'"),
    ],
)
def test_bad_target_precision_is_refused(kwargs: dict[str, Any], match: str) -> None:
    env = kwargs.pop("env")
    with pytest.raises(ValueError, match=match):
        MPO("MlpPolicy", env, **kwargs)


@pytest.mark.parametrize("net_arch", [[64, 64], [64, 64, 64]], ids=["two_layers", "three_layers"])
def test_parametric_improvement_reads_its_actions_through_the_bfloat16_pass(net_arch: list[int]) -> None:
    """The parametric policy loss and its gradients move by bfloat16 roundings only, and do move: the pass is used
    (with three layers, through an in-place activation kept in bfloat16 between two products)."""
    model = small_model(policy_improvement="parametric", policy_kwargs={"net_arch": net_arch})
    th.manual_seed(1)
    batch = model.replay_buffer.sample(model.batch_size)
    losses, gradients = {}, {}
    for precision in ("float32", "bfloat16"):
        model.target_precision = precision
        model.actor.zero_grad()
        th.manual_seed(2)
        _, policy_loss, _, _ = model._losses(batch)
        policy_loss.backward()
        losses[precision] = policy_loss.detach()
        gradients[precision] = th.cat([parameter.grad.flatten() for parameter in model.actor.parameters()])
    # the baseline V(s) comes from the target pass and moves the loss, not its gradients: these come from the 2N actions
    assert not th.equal(gradients["bfloat16"], gradients["float32"]), "the parametric pass ignored target_precision"
    th.testing.assert_close(losses["bfloat16"], losses["float32"], rtol=2e-2, atol=1e-4)
    cosine = th.nn.functional.cosine_similarity(gradients["bfloat16"], gradients["float32"], dim=0)
    assert cosine > 0.99, cosine


@pytest.fixture
def fresh_hardware_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolution caches each device's answer; a test that fakes the hardware starts from an empty cache."""
    monkeypatch.setattr(hardware, "_NATIVE_BFLOAT16", {})


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_auto_on_a_cpu_follows_its_bfloat16_units(
    fresh_hardware_answers: None, monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, expected: bool
) -> None:
    monkeypatch.setattr(th.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(th.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    cpu = th.device("cpu")
    assert hardware.target_dtype("auto", cpu) == (th.bfloat16 if expected else th.float32)
    # explicit choices ignore the hardware; a categorical critic keeps float32 under "auto"
    assert hardware.target_dtype("float32", cpu) == th.float32
    assert hardware.target_dtype("bfloat16", cpu) == th.bfloat16
    assert hardware.target_dtype("auto", cpu, sampled=False) == th.float32


@pytest.mark.parametrize("capability, expected", [((7, 5), th.float32), ((8, 0), th.bfloat16), ((9, 0), th.bfloat16)])
def test_auto_on_a_gpu_needs_ampere_or_later(
    fresh_hardware_answers: None, monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: th.dtype
) -> None:
    monkeypatch.setattr(th.cuda, "get_device_capability", lambda device=None: capability)
    assert hardware.target_dtype("auto", th.device("cuda", 0)) == expected
    assert hardware.target_dtype("auto", th.device("mps")) == th.float32


def test_auto_resolves_on_the_model_and_again_after_loading(
    fresh_hardware_answers: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(th.cpu, "_is_amx_tile_supported", lambda: True)
    model = small_model(target_precision="auto")
    assert model.target_dtype == th.bfloat16
    model.save(tmp_path / "model.zip")
    # loaded on a machine without bfloat16 units, the same model computes its target pass in float32
    monkeypatch.setattr(hardware, "_NATIVE_BFLOAT16", {})
    monkeypatch.setattr(th.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(th.cpu, "_is_avx512_bf16_supported", lambda: False)
    loaded = MPO.load(tmp_path / "model.zip")
    assert loaded.target_precision == "auto" and loaded.target_dtype == th.float32


def test_auto_with_discrete_actions_is_accepted_and_keeps_float32() -> None:
    model = MPO("MlpPolicy", "CartPole-v1", target_precision="auto")
    assert model.target_dtype == th.float32
