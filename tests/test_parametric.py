"""MPO's parametric policy improvement (policy_improvement="parametric"): trains, respects its trust regions, reloads."""

import re

import numpy as np
import pytest
import torch as th

from sb3_mpo import MPO
from sb3_mpo.mpo.improvement import ParametricGaussianImprovement
from sb3_mpo.mpo.policies import SampledCritic

SMALL = dict(learning_starts=100, batch_size=64, n_action_samples=8, policy_kwargs=dict(net_arch=[32, 32]))


@pytest.fixture(scope="module")
def parametric_model():
    model = MPO("MlpPolicy", "Pendulum-v1", seed=0, policy_improvement="parametric", **SMALL)
    model.learn(400)
    return model


def test_parametric_improvement_trains_and_logs(parametric_model):
    assert isinstance(parametric_model.improvement, ParametricGaussianImprovement)
    logged = parametric_model.logger.name_to_value
    for key in ("train/actor_loss", "train/kl_mean", "train/kl_std", "train/alpha_mean", "train/alpha_std"):
        assert np.isfinite(logged[key]), key
    assert "train/temperature" not in logged  # no E-step, no temperature
    assert set(dict(parametric_model.multipliers.named_parameters())) == {"raw_alpha_mean", "raw_alpha_std"}


def test_parametric_trust_regions_hold_on_a_fixed_critic(parametric_model, monkeypatch):
    """With the critic frozen, 300 updates keep the measured mean and std KLs within a few times their bounds."""
    model = parametric_model
    # train() would reset the critic's learning rate; both are put back for the module's other tests
    monkeypatch.setattr(model, "_update_learning_rate", lambda optimizers: None)
    for group in model.critic.optimizer.param_groups:
        monkeypatch.setitem(group, "lr", 0.0)
    before = [parameter.detach().clone() for parameter in model.actor.parameters()]
    model.train(300, model.batch_size)
    logged = model.logger.name_to_value
    assert logged["train/kl_mean"] < 3 * model.epsilon_mean
    assert logged["train/kl_std"] < 3 * model.epsilon_std
    # and the bounds held a policy that moved, not one that stood still
    assert any(not th.equal(old, new) for old, new in zip(before, model.actor.parameters(), strict=True))
    assert logged["train/kl_mean"] > 0.1 * model.epsilon_mean


def test_parametric_improvement_saves_and_loads(parametric_model, tmp_path):
    parametric_model.save(tmp_path / "model.zip")
    loaded = MPO.load(tmp_path / "model.zip", env=parametric_model.get_env())
    assert loaded.policy_improvement == "parametric" and isinstance(loaded.improvement, ParametricGaussianImprovement)
    for name, value in parametric_model.multipliers.state_dict().items():
        assert th.equal(value, loaded.multipliers.state_dict()[name]), name
    before = [parameter.detach().clone() for parameter in loaded.actor.parameters()]
    loaded.learn(50, reset_num_timesteps=False)
    assert loaded.num_timesteps == parametric_model.num_timesteps + 50
    assert any(not th.equal(old, new) for old, new in zip(before, loaded.actor.parameters(), strict=True)), "it trains on"


def test_parametric_improvement_is_refused_for_discrete_actions():
    with pytest.raises(ValueError, match="policy_improvement='parametric' is invalid with a Discrete action space"):
        MPO("MlpPolicy", "CartPole-v1", policy_improvement="parametric")


def test_unknown_policy_improvement_is_refused():
    with pytest.raises(ValueError, match="policy_improvement"):
        MPO("MlpPolicy", "Pendulum-v1", policy_improvement="exact")


@pytest.mark.parametrize("parametric_samples, rows", [(None, 2 * 8), (1, 2), (3, 6)])
def test_parametric_samples_sets_the_actions_scored_per_state(parametric_samples, rows, monkeypatch, tmp_path):
    """K reparameterised actions per state for each half of the loss (N by default): the critic scores 2K per state."""
    model = MPO(
        "MlpPolicy", "Pendulum-v1", seed=0, policy_improvement="parametric", parametric_samples=parametric_samples, **SMALL
    )
    model.learn(150)
    scored = []
    original = SampledCritic.sampled_q_values

    def recording(self, obs, actions, *args):
        scored.append(actions.shape[0])
        return original(self, obs, actions, *args)

    monkeypatch.setattr(SampledCritic, "sampled_q_values", recording)
    model.train(2, model.batch_size)
    assert scored == [rows, rows]
    model.save(tmp_path / "model.zip")
    assert MPO.load(tmp_path / "model.zip").parametric_samples == parametric_samples


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"policy_improvement": "parametric", "parametric_samples": 0}, "parametric_samples=0 is invalid"),
        ({"policy_improvement": "parametric", "parametric_samples": 2.0}, "parametric_samples=2.0 is invalid"),
        ({"parametric_samples": 4}, "parametric_samples=4 is invalid, expected None unless policy_improvement='parametric'"),
    ],
)
def test_bad_parametric_samples_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        MPO("MlpPolicy", "Pendulum-v1", **kwargs)


def test_parametric_loss_is_both_halves_expected_advantage_plus_the_trust_regions():
    """
    The assembled loss against a direct computation with the same noise ξ (K = 3 draws): a_μ = μ_θ + σ_old·ξ and
    a_Σ = μ_old + σ_θ·ξ, each scored by the target critic plus the action penalty −‖a − clip(a)‖², less the baseline
    E_{π_old} Q' (the mean of the batch's sampled values); plus α_μ·KL_μ + α_Σ·KL_Σ (torch.distributions), with θ moved
    off θ_old so that every term counts.
    """
    settings = {**SMALL, "policy_kwargs": dict(net_arch=[16], init_std=1.0)}  # wide: some actions outside the box
    model = MPO(
        "MlpPolicy",
        "Pendulum-v1",
        seed=0,
        q_target="n_step",
        policy_improvement="parametric",
        parametric_samples=3,
        **settings,
    )
    model.learn(SMALL["learning_starts"])  # fills replay, no update yet
    actor, critic_target, multipliers = model.actor, model.critic_target, model.multipliers
    with th.no_grad():
        actor.mu.bias += 0.4
        actor.std.bias -= 0.3
        multipliers.raw_alpha_mean.fill_(0.2)
        multipliers.raw_alpha_std.fill_(-0.5)
    batch = model.evaluation.evaluate(model.replay_buffer.sample(model.batch_size)).improvement
    th.manual_seed(5)
    policy_loss, _, _ = model.improvement.improve(batch)

    th.manual_seed(5)
    noise = th.randn((3, *batch.mean_old.shape), dtype=th.float32)
    with th.no_grad():
        mean, std = actor.distribution_params(batch.observations)

        def value(actions: th.Tensor) -> th.Tensor:
            penalty = -((actions - actions.clamp(-1.0, 1.0)) ** 2).sum(-1)
            return critic_target.sampled_q_values(batch.observations, actions.clamp(-1.0, 1.0)) + penalty

        baseline = batch.q_values.mean(0)
        advantage = (value(mean + batch.std_old * noise) - baseline).mean() + (
            value(batch.mean_old + std * noise) - baseline
        ).mean()
        normal, kl_divergence = th.distributions.Normal, th.distributions.kl_divergence
        kl_mean = kl_divergence(normal(batch.mean_old, batch.std_old), normal(mean, batch.std_old)).sum(-1).mean()
        kl_std = kl_divergence(normal(batch.mean_old, batch.std_old), normal(batch.mean_old, std)).sum(-1).mean()
        alpha_mean, alpha_std = multipliers.alpha("mean"), multipliers.alpha("std")
    assert kl_mean > 1e-3 and kl_std > 1e-3
    expected = -advantage + alpha_mean.sum() * kl_mean + alpha_std.sum() * kl_std
    assert policy_loss.item() == pytest.approx(expected.item(), rel=1e-4)
