"""``compile_update``: the compiled losses give the eager update's losses, diagnostics and parameters."""

from pathlib import Path
from typing import Any

import pytest
import torch as th
from torch import nn
from torch._inductor import config as inductor_config

from sb3_mpo import MPO
from sb3_mpo.common.compilation import cpu_compiler_problem

CASES: dict[str, dict[str, Any]] = {
    "gaussian_retrace": {"env": "Pendulum-v1"},
    "gaussian_n_step": {"env": "Pendulum-v1", "q_target": "n_step", "n_steps": 3},
    "categorical_retrace": {"env": "CartPole-v1"},
    "gaussian_pair_of_critics": {"env": "Pendulum-v1", "policy_kwargs": {"n_critics": 2}},
    # Acme's torso, whose input block the sampled pass rewrites (CrossQ's critic is never compiled)
    "gaussian_acme_torso": {"env": "Pendulum-v1", "policy_kwargs": {"layer_norm": True, "activation_fn": nn.ELU}},
}


def make_model(compile_update: bool, policy_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> MPO:
    # learning_starts above the steps taken: learn() only fills the buffer, the test runs the updates itself
    return MPO(
        "MlpPolicy",
        learning_starts=10_000,
        batch_size=64,
        policy_kwargs={"net_arch": [16, 16], **(policy_kwargs or {})},
        compile_update=compile_update,
        seed=0,
        **kwargs,
    )


def sample(model: MPO, seed: int) -> Any:
    th.manual_seed(seed)
    n_samples = model.batch_size // model.segment_length if model.q_target == "retrace" else model.batch_size
    return model.replay_buffer.sample(n_samples)


def updates(model: MPO, batches: list[Any]) -> list[dict[str, th.Tensor]]:
    """One gradient step per batch, each from the same random state."""
    diagnostics = []
    for seed, batch in enumerate(batches):
        th.manual_seed(100 + seed)
        diagnostics.append(model._gradient_step(batch))
    return diagnostics


def assert_same_update(eager: MPO, compiled: MPO, n_updates: int = 3) -> None:
    batches = [sample(eager, seed) for seed in range(n_updates)]
    for step, (expected, actual) in enumerate(zip(updates(eager, batches), updates(compiled, batches), strict=True)):
        assert expected.keys() == actual.keys()
        for key, value in expected.items():
            th.testing.assert_close(actual[key], value, rtol=1e-4, atol=1e-5, msg=f"{key} at update {step}")
    for module in ("policy", "multipliers"):
        expected_state, actual_state = getattr(eager, module).state_dict(), getattr(compiled, module).state_dict()
        for name, tensor in expected_state.items():
            th.testing.assert_close(actual_state[name], tensor, rtol=1e-4, atol=1e-5, msg=f"{module}.{name}")
    for optimizer in ("actor.optimizer", "critic.optimizer"):
        expected_adam = eager.get_parameters()[optimizer]["state"]
        actual_adam = compiled.get_parameters()[optimizer]["state"]
        for index, state in expected_adam.items():
            th.testing.assert_close(actual_adam[index]["exp_avg"], state["exp_avg"], rtol=1e-4, atol=1e-6)


@pytest.fixture
def same_random_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Compiled graphs draw their own random numbers unless inductor falls back to eager's generator. Where this machine
    cannot compile for the CPU, the update would run eagerly and the comparison would prove nothing: skipped, saying why.
    """
    problem = cpu_compiler_problem()
    if problem is not None:
        pytest.skip(f"no C++ compiler for TorchInductor on this machine: {problem}")
    monkeypatch.setattr(inductor_config, "fallback_random", True)


def assert_compiled(model: MPO) -> None:
    """The model's losses are a compiled function, not the eager method."""
    assert model._compute_losses != model._losses


@pytest.mark.parametrize("case", CASES)
def test_compiled_update_matches_eager(case: str, same_random_draws: None) -> None:
    kwargs = CASES[case]
    eager = make_model(compile_update=False, **kwargs)
    eager.learn(200)
    compiled = make_model(compile_update=True, **kwargs)
    assert_compiled(compiled)
    th.testing.assert_close(compiled.policy.state_dict(), eager.policy.state_dict(), rtol=0, atol=0)
    compiled.replay_buffer = eager.replay_buffer
    assert_same_update(eager, compiled)


def test_compile_update_survives_save_and_load(tmp_path: Path, same_random_draws: None) -> None:
    model = make_model(compile_update=True, env="Pendulum-v1", q_target="n_step")
    model.learn(200)
    model.save(tmp_path / "model.zip")
    loaded = MPO.load(tmp_path / "model.zip", env=model.get_env())
    assert loaded.compile_update is True
    assert_compiled(loaded)
    eager = MPO.load(tmp_path / "model.zip", env=model.get_env(), custom_objects={"compile_update": False})
    assert eager.compile_update is False
    loaded.replay_buffer = eager.replay_buffer = model.replay_buffer
    assert_same_update(eager, loaded, n_updates=2)


def test_compile_update_must_be_a_boolean() -> None:
    with pytest.raises(ValueError, match="compile_update"):
        MPO("MlpPolicy", "Pendulum-v1", compile_update="yes")  # type: ignore[arg-type]


def test_without_a_cpu_compiler_the_update_runs_eagerly_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor import cpp_builder, exc

    def no_compiler() -> str:
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.warns(UserWarning, match="compile_update=True: torch.compile needs a C\\+\\+ compiler"):
        model = make_model(compile_update=True, env="Pendulum-v1", device="cpu")
    assert model._compute_losses == model._losses
    model.learning_starts = 50
    model.learn(100)
    assert model._n_updates > 0
