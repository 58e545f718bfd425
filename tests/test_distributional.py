"""The distributional critics (categorical, Gaussian mixture): their losses and values against independent computations,
and the model with each."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch as th
from scipy import integrate, stats
from scipy.special import logsumexp
from torch.distributions import Categorical, MixtureSameFamily, Normal

from sb3_mpo import MPO
from sb3_mpo.mpo import losses
from sb3_mpo.mpo.evaluation import CategoricalNStepEvaluation, MixtureNStepEvaluation
from sb3_mpo.mpo.policies import SampledCritic
from sb3_mpo.mpo.torsos import SharedBatchRenorm

SUPPORT = (-10.0, 10.0)


def brute_force_projection(target_atoms: np.ndarray, probs: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """Bellemare et al. (2017), Algorithm 1: the lower / upper neighbour split, one mass at a time."""
    v_min, v_max, spacing = atoms[0], atoms[-1], atoms[1] - atoms[0]
    projected = np.zeros_like(probs)
    for row in range(probs.shape[0]):
        for j, target in enumerate(target_atoms[row]):
            position = (np.clip(target, v_min, v_max) - v_min) / spacing
            lower, upper = int(np.floor(position)), int(np.ceil(position))
            if lower == upper:
                projected[row, lower] += probs[row, j]
            else:
                projected[row, lower] += probs[row, j] * (upper - position)
                projected[row, upper] += probs[row, j] * (position - lower)
    return projected


def test_projection_matches_the_papers_algorithm() -> None:
    generator = th.Generator().manual_seed(0)
    atoms = th.linspace(*SUPPORT, 11, dtype=th.float64)
    probs = th.softmax(th.randn(16, 11, generator=generator, dtype=th.float64), dim=-1)
    rewards = 6.0 * th.randn(16, 1, generator=generator, dtype=th.float64)  # some targets leave the support
    rewards[0] = 2.0  # with discount 1 below, a shift by a whole number of atoms: every mass lands on an atom
    discounts = th.rand(16, 1, generator=generator, dtype=th.float64)
    discounts[0] = 1.0
    target_atoms = rewards + discounts * atoms
    projected = losses.categorical_projection(target_atoms, probs, atoms)
    expected = brute_force_projection(target_atoms.numpy(), probs.numpy(), atoms.numpy())
    np.testing.assert_allclose(projected.numpy(), expected, atol=1e-12)
    th.testing.assert_close(projected.sum(dim=-1), th.ones(16, dtype=th.float64))


def test_projection_keeps_the_mean_of_targets_inside_the_support() -> None:
    atoms = th.linspace(*SUPPORT, 21, dtype=th.float64)
    probs = th.softmax(th.randn(8, 21, dtype=th.float64), dim=-1)
    target_atoms = 0.5 + 0.9 * atoms.expand(8, 21)  # within [-8.5, 9.5]
    projected = losses.categorical_projection(target_atoms, probs, atoms)
    th.testing.assert_close(projected @ atoms, (probs * target_atoms).sum(dim=-1))


def test_cross_entropy_and_mean_match_torch_distributions() -> None:
    logits, atoms = th.randn(5, 7, dtype=th.float64), th.linspace(-3.0, 3.0, 7, dtype=th.float64)
    target = th.softmax(th.randn(5, 7, dtype=th.float64), dim=-1)
    distribution = Categorical(logits=logits)
    log_probs = th.stack([distribution.log_prob(th.full((5,), i)) for i in range(7)], dim=-1)
    th.testing.assert_close(losses.categorical_cross_entropy(logits, target), -(target * log_probs).sum(-1).mean())
    th.testing.assert_close(losses.categorical_mean(logits, atoms), distribution.probs @ atoms)


def categorical_model(**kwargs) -> MPO:
    policy_kwargs = {"critic_support": SUPPORT, "n_atoms": 11, "net_arch": [16, 16], **kwargs.pop("policy_kwargs", {})}
    return MPO(
        "MlpPolicy", "Pendulum-v1", q_target="n_step", n_steps=3, batch_size=32, policy_kwargs=policy_kwargs, seed=0, **kwargs
    )


def test_critic_loss_is_the_cross_entropy_to_the_projected_shifted_target() -> None:
    """A target critic whose every output is a point mass on atom k: whatever actions are sampled, the target is
    r + γⁿ(1 − done)·z_k, projected; the loss is the online critic's cross-entropy to it."""
    model = categorical_model(learning_starts=10_000)
    model.learn(100)
    assert isinstance(model.evaluation, CategoricalNStepEvaluation)
    critic_target = model.critic_target
    assert isinstance(critic_target, SampledCritic) and critic_target.atoms is not None
    last = critic_target.q_networks[0][-1]
    with th.no_grad():
        last.weight.zero_()
        last.bias.fill_(-50.0)
        last.bias[7] = 50.0  # z_7 = 4
    batch = model.replay_buffer.sample(32)
    evaluation = model.evaluation.evaluate(batch)

    atoms = critic_target.atoms.numpy()
    point_mass = np.eye(11)[[7] * 32]
    shifted = batch.rewards.numpy() + batch.discounts.numpy() * (1 - batch.dones.numpy()) * atoms
    target = brute_force_projection(shifted, point_mass, atoms)
    logits = model.critic(batch.observations, model.actor.squash(batch.actions))[0]
    distribution = Categorical(logits=logits)
    expected = -np.mean(
        [sum(target[b, i] * distribution.log_prob(th.tensor(i))[b].item() for i in range(11)) for b in range(32)]
    )
    assert evaluation.critic_loss.item() == pytest.approx(expected, rel=1e-5)
    th.testing.assert_close(
        evaluation.improvement.value_probs, th.tensor(np.eye(11)[[7] * 32], dtype=th.float32), atol=1e-6, rtol=0
    )
    th.testing.assert_close(evaluation.improvement.q_values, th.full_like(evaluation.improvement.q_values, 4.0))


def test_categorical_critic_outputs_logits_and_its_values_are_their_means() -> None:
    model = categorical_model(policy_kwargs={"layer_norm": True})
    critic = model.critic
    assert isinstance(critic, SampledCritic) and critic.distribution == "categorical"
    observations, actions = th.randn(4, 3), th.rand(6, 4, 1) * 2 - 1
    logits = critic.sampled_outputs(observations, actions)
    assert logits.shape == (6, 4, 11)
    looped = th.stack([critic(observations, actions[j])[0] for j in range(6)])
    th.testing.assert_close(logits, looped)
    th.testing.assert_close(critic.sampled_q_values(observations, actions), Categorical(logits=looped).probs @ critic.atoms)


#: The critic's normalisation: none (with a target critic), or CrossQ's (no target critic)
NORMALISATIONS = {"target_critic": {}, "crossq": {"batch_renorm": True}}


@pytest.mark.parametrize("normalisation", NORMALISATIONS.values(), ids=NORMALISATIONS.keys())
def test_categorical_critic_survives_save_and_load(normalisation: dict, tmp_path: Path) -> None:
    model = categorical_model(learning_starts=50, policy_kwargs=normalisation)
    model.learn(150)
    model.save(tmp_path / "model.zip")
    loaded = MPO.load(tmp_path / "model.zip", env=model.get_env())
    assert loaded.policy.critic_support == SUPPORT and loaded.policy.n_atoms == 11
    assert loaded.policy.batch_renorm == bool(normalisation)
    th.testing.assert_close(loaded.policy.state_dict(), model.policy.state_dict())
    observations = th.randn(5, 3)
    actions = th.rand(2, 5, 1) * 2 - 1
    th.testing.assert_close(
        loaded.critic.sampled_q_values(observations, actions), model.critic.sampled_q_values(observations, actions)
    )
    loaded.learn(50, reset_num_timesteps=False)
    assert loaded.num_timesteps == 200


@pytest.mark.parametrize(
    ("env", "kwargs", "policy_kwargs", "match"),
    [
        ("Pendulum-v1", {}, {"critic_support": SUPPORT}, "q_target='retrace'"),
        (
            "Pendulum-v1",
            {"q_target": "n_step", "value_normalization": True},
            {"critic_support": SUPPORT},
            "value_normalization=True",
        ),
        ("Pendulum-v1", {"q_target": "n_step"}, {"critic_support": (1.0, -1.0)}, "critic_support=\\(1.0, -1.0\\)"),
        ("Pendulum-v1", {"q_target": "n_step"}, {"critic_support": (-1.0, float("inf"))}, "critic_support"),
        ("Pendulum-v1", {"q_target": "n_step"}, {"critic_support": SUPPORT, "n_atoms": 1}, "n_atoms=1"),
        ("CartPole-v1", {"q_target": "n_step"}, {"critic_support": SUPPORT}, "Discrete"),
    ],
)
def test_bad_categorical_critics_are_refused(env: str, kwargs: dict, policy_kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MPO("MlpPolicy", env, policy_kwargs=policy_kwargs, **kwargs)


# === Gaussian mixture critic ===


def random_mixtures(batch: int, components: int, seed: int = 0) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    generator = th.Generator().manual_seed(seed)
    logits = th.randn(batch, components, generator=generator, dtype=th.float64)
    means = 5.0 * th.randn(batch, components, generator=generator, dtype=th.float64)
    scales = 0.1 + th.rand(batch, components, generator=generator, dtype=th.float64)
    return logits, means, scales


def test_mixture_log_prob_matches_scipy() -> None:
    logits, means, scales = random_mixtures(4, 3)
    values = 6.0 * th.randn(4, 7, dtype=th.float64)
    weights = th.softmax(logits, dim=-1).numpy()
    expected = np.log(
        [
            [
                sum(weights[b, m] * stats.norm.pdf(value, means[b, m].item(), scales[b, m].item()) for m in range(3))
                for value in row
            ]
            for b, row in enumerate(values.numpy())
        ]
    )
    np.testing.assert_allclose(losses.mixture_log_prob(values, logits, means, scales).numpy(), expected, rtol=1e-10)


def test_mixture_log_prob_gradients_match_torch_distributions_and_finite_differences() -> None:
    """The hand-written backward pass against autograd through torch.distributions' mixture, for every input (the
    values too), and against finite differences (gradcheck); one row of values lies hundreds of scales from every
    component, where only the log-sum-exp's peak keeps the density finite."""
    logits, means, scales = random_mixtures(5, 3, seed=2)
    values = 6.0 * th.randn(5, 9, dtype=th.float64)
    values[0] = 400.0
    inputs = [x.clone().requires_grad_() for x in (values, logits, means, scales)]
    reference_inputs = [x.clone().requires_grad_() for x in (values, logits, means, scales)]
    ours = losses.mixture_log_prob(*inputs)
    v, lg, mu, sd = reference_inputs
    reference = MixtureSameFamily(Categorical(logits=lg), Normal(mu, sd)).log_prob(v.T).T  # (K, B) samples -> (B, K)
    th.testing.assert_close(ours, reference)
    assert th.isfinite(ours[0]).all() and (ours[0] < -1000).all()
    cotangent = th.randn(5, 9, dtype=th.float64)
    mine = th.autograd.grad((ours * cotangent).sum(), inputs)
    theirs = th.autograd.grad((reference * cotangent).sum(), reference_inputs)
    for gradient, expected in zip(mine, theirs, strict=True):
        th.testing.assert_close(gradient, expected)
    small = [x.clone().requires_grad_() for x in (values[1:3, :4], logits[1:3], means[1:3], scales[1:3])]
    assert th.autograd.gradcheck(losses.mixture_log_prob, small)


def test_mixture_mean_and_samples_have_the_mixtures_moments() -> None:
    logits, means, scales = random_mixtures(3, 4, seed=1)
    weights = th.softmax(logits, dim=-1)
    mean = (weights * means).sum(-1)
    variance = (weights * (scales**2 + means**2)).sum(-1) - mean**2
    th.testing.assert_close(losses.mixture_mean(logits, means), mean)
    th.manual_seed(0)
    n = 200_000
    for samples in (
        losses.sample_mixture(logits.expand(n, 3, 4), means.expand(n, 3, 4), scales.expand(n, 3, 4)),
        losses.sample_mixture(logits, means, scales, (n,)),  # n draws of each of the 3 mixtures
    ):
        assert samples.shape == (n, 3)
        standard_error = (variance / n).sqrt()
        assert ((samples.mean(0) - mean).abs() < 5 * standard_error).all()
        th.testing.assert_close(samples.var(0), variance, rtol=0.03, atol=0.0)


def test_mixture_quadrature_integrates_polynomials_exactly_and_smooth_functions_as_scipy() -> None:
    """Its weighted sums are the mixtures' moments up to degree 2K − 1 (scipy's Gaussian moments), and its expectation
    of another mixture's log-density, the critic's loss, matches scipy's adaptive integration."""
    logits, means, scales = random_mixtures(3, 4, seed=3)
    weights = th.softmax(logits, dim=-1).numpy()
    nodes = 3
    points, point_weights = losses.mixture_quadrature(logits, means, scales, nodes)
    assert points.shape == point_weights.shape == (3, 4 * nodes)
    th.testing.assert_close(point_weights.sum(-1), th.ones(3, dtype=th.float64))
    for degree in range(2 * nodes):
        expected = [sum(weights[b, m] * stats.norm(means[b, m].item(), scales[b, m].item()).moment(degree) for m in range(4))
                    for b in range(3)]  # fmt: skip
        np.testing.assert_allclose((point_weights * points**degree).sum(-1).numpy(), expected, rtol=1e-9)

    logits_q, means_q, scales_q = random_mixtures(3, 2, seed=4)
    other = (logits_q, means_q, scales_q + 2.0)  # a critic's mixture wide enough that its log-density is smooth
    points, point_weights = losses.mixture_quadrature(logits, means, scales, 20)
    ours = (point_weights * losses.mixture_log_prob(points, *other)).sum(-1).numpy()
    for b in range(3):

        def integrand(z: float, b: int = b) -> float:
            density = sum(weights[b, m] * stats.norm.pdf(z, means[b, m].item(), scales[b, m].item()) for m in range(4))
            log_q = losses.mixture_log_prob(th.tensor([[z]], dtype=th.float64), *(x[b : b + 1] for x in other)).item()
            return density * log_q

        low, high = (means[b] - 12 * scales[b]).min().item(), (means[b] + 12 * scales[b]).max().item()
        expected = integrate.quad(integrand, low, high, limit=400, points=means[b].tolist())[0]
        assert ours[b] == pytest.approx(expected, rel=1e-8)


def mixture_model(**kwargs) -> MPO:
    policy_kwargs = {"critic_mixture": 3, "net_arch": [16, 16], **kwargs.pop("policy_kwargs", {})}
    return MPO(
        "MlpPolicy", "Pendulum-v1", q_target="n_step", n_steps=3, batch_size=32, policy_kwargs=policy_kwargs, seed=0, **kwargs
    )


@pytest.mark.parametrize("return_samples", [1, 4])
def test_mixture_critic_loss_is_the_likelihood_of_shifted_target_samples(return_samples: int) -> None:
    """A target critic whose every mixture is (almost) a point mass at c: every sampled next return is c, so the loss
    is −log p(r + γⁿ(1 − done)·c | s, a) under the online critic's mixture, computed here with scipy."""
    model = mixture_model(learning_starts=10_000, mixture_return_samples=return_samples)
    model.learn(100)
    assert isinstance(model.evaluation, MixtureNStepEvaluation)
    critic_target, c = model.critic_target, 4.0
    assert isinstance(critic_target, SampledCritic) and critic_target.distribution == "mixture"
    last = critic_target.q_networks[0][-1]
    with th.no_grad():
        last.weight.zero_()
        last.bias.copy_(th.tensor([50.0, -50.0, -50.0, c, 0.0, 0.0, -50.0, -50.0, -50.0]))  # logits, means, raw scales
    batch = model.replay_buffer.sample(32)
    th.manual_seed(0)
    evaluation = model.evaluation.evaluate(batch)

    samples = evaluation.improvement.value_samples
    assert samples is not None and samples.shape == (32, model.n_action_samples * return_samples)
    th.testing.assert_close(samples, th.full_like(samples, c), atol=0.01, rtol=0)
    targets = (batch.rewards + batch.discounts * (1 - batch.dones) * c).numpy().ravel()
    logits, means, scales = model.critic.mixture(model.critic(batch.observations, model.actor.squash(batch.actions))[0])
    weights, means, scales = th.softmax(logits, -1).detach().numpy(), means.detach().numpy(), scales.detach().numpy()
    log_likelihoods = [logsumexp(stats.norm.logpdf(targets[b], means[b], scales[b]), b=weights[b]) for b in range(32)]
    assert evaluation.critic_loss.item() == pytest.approx(-np.mean(log_likelihoods), rel=1e-3)
    th.testing.assert_close(evaluation.improvement.q_values, th.full_like(evaluation.improvement.q_values, c))


def test_mixture_critic_loss_with_quadrature_is_the_weighted_likelihood_of_the_shifted_points() -> None:
    """A target critic whose every mixture is N(c, σ²) (the other components weigh e⁻¹⁰⁰): the targets are the K
    Gauss-Hermite points c + √2·σ·x_j of each component at each sampled action, weighted w_m·h_j/(N·√π), and the loss is
    their weighted negative log-likelihood under the online critic's mixture at (s, a), computed here with scipy."""
    nodes = 3
    model = mixture_model(learning_starts=10_000, mixture_quadrature_nodes=nodes)
    model.learn(100)
    c, sigma = 4.0, 2.0
    raw_scale = np.log(np.expm1(sigma - SampledCritic.min_scale))
    with th.no_grad():
        last = model.critic_target.q_networks[0][-1]
        last.weight.zero_()
        last.bias.copy_(th.tensor([50.0, -50.0, -50.0, c, 0.0, 0.0, raw_scale, 0.0, 0.0]))
    batch = model.replay_buffer.sample(32)
    evaluation = model.evaluation.evaluate(batch)

    samples, weights = evaluation.improvement.value_samples, evaluation.improvement.value_weights
    n_points = model.n_action_samples * 3 * nodes  # N actions, M = 3 components, K points each
    assert samples is not None and weights is not None and samples.shape == weights.shape == (32, n_points)
    abscissae, hermite_weights = np.polynomial.hermite.hermgauss(nodes)
    per_action = samples.reshape(32, model.n_action_samples, 3, nodes)[:, :, 0]  # the component that weighs 1
    th.testing.assert_close(
        per_action, th.tensor(c + np.sqrt(2) * sigma * abscissae, dtype=th.float32).expand_as(per_action), atol=1e-5, rtol=0
    )
    th.testing.assert_close(weights.sum(-1), th.ones(32))
    per_point = weights.reshape(32, model.n_action_samples, 3, nodes)
    rule = th.tensor(hermite_weights / (model.n_action_samples * np.sqrt(np.pi)), dtype=th.float32)
    th.testing.assert_close(per_point[:, :, 0], rule.expand_as(per_point[:, :, 0]), atol=1e-7, rtol=1e-5)
    th.testing.assert_close(per_point[:, :, 1:], th.zeros_like(per_point[:, :, 1:]), atol=1e-12, rtol=0)
    targets = (batch.rewards + batch.discounts * (1 - batch.dones) * samples).numpy()
    logits, means, scales = model.critic.mixture(model.critic(batch.observations, model.actor.squash(batch.actions))[0])
    mixture_weights, means, scales = th.softmax(logits, -1).detach().numpy(), means.detach().numpy(), scales.detach().numpy()
    log_likelihoods = [
        logsumexp(stats.norm.logpdf(targets[b][:, None], means[b], scales[b]), b=mixture_weights[b], axis=-1)
        for b in range(32)
    ]
    expected = -np.mean([np.sum(weights[b].numpy() * log_likelihoods[b]) for b in range(32)])
    assert evaluation.critic_loss.item() == pytest.approx(expected, rel=1e-4)


def test_mixture_return_samples_are_independent_draws_of_each_sampled_actions_mixture() -> None:
    """A target critic whose every mixture is one Gaussian N(c, σ²) (the other components weigh e⁻¹⁰⁰): the N·Z returns
    per transition have mean c and standard deviation σ, and so do the Z draws at each sampled action, which repeated
    copies of one draw would not have."""
    n_draws = 64
    model = mixture_model(learning_starts=10_000, mixture_return_samples=n_draws)
    model.learn(100)
    critic_target, c, sigma = model.critic_target, 4.0, 2.0
    raw_scale = np.log(np.expm1(sigma - SampledCritic.min_scale))  # softplus(raw) + min_scale = σ
    with th.no_grad():
        last = critic_target.q_networks[0][-1]
        last.weight.zero_()
        last.bias.copy_(th.tensor([50.0, -50.0, -50.0, c, 0.0, 0.0, raw_scale, 0.0, 0.0]))
    th.manual_seed(0)
    samples = model.evaluation.evaluate(model.replay_buffer.sample(32)).improvement.value_samples
    assert samples is not None and samples.shape == (32, model.n_action_samples * n_draws)
    assert samples.mean().item() == pytest.approx(c, abs=5 * sigma / samples.numel() ** 0.5)
    assert samples.std().item() == pytest.approx(sigma, rel=0.02)
    per_action = samples.reshape(32, n_draws, model.n_action_samples)  # (B, Z, N): the N actions' draws vary along Z
    assert per_action.std(dim=1).mean().item() == pytest.approx(sigma, rel=0.05)


def test_mixture_init_scale_scales_the_softplus_so_that_components_start_near_it() -> None:
    """σ = init_scale / log 2 · log(1 + eˣ) + min_scale of the raw outputs x (numpy); a zero output is init_scale
    (plus the floor); without the option the plain softplus."""
    x = th.linspace(-5.0, 5.0, 7, dtype=th.float64)
    outputs = th.cat([th.zeros(7, 2, dtype=th.float64), x[:, None]], dim=-1)  # one component: logit, mean, raw scale
    for init_scale, expected in (
        (1e-3, 1e-3 / np.log(2.0) * np.log1p(np.exp(x.numpy())) + SampledCritic.min_scale),
        (None, np.log1p(np.exp(x.numpy())) + SampledCritic.min_scale),
    ):
        model = mixture_model(policy_kwargs={"critic_mixture": 1, "critic_mixture_init_scale": init_scale})
        for critic in (model.critic, model.critic_target):
            np.testing.assert_allclose(critic.mixture(outputs)[2].numpy(), expected[:, None], rtol=1e-12)
    zero = th.zeros(1, 3, dtype=th.float64)
    assert model.critic.mixture(zero)[2].item() == pytest.approx(np.log(2.0) + SampledCritic.min_scale)


@pytest.mark.parametrize(
    "targets", [{"mixture_return_samples": 2}, {"mixture_quadrature_nodes": 3}], ids=["draws", "quadrature"]
)
@pytest.mark.parametrize("normalisation", NORMALISATIONS.values(), ids=NORMALISATIONS.keys())
def test_mixture_critic_survives_save_and_load(normalisation: dict, targets: dict, tmp_path: Path) -> None:
    policy_kwargs = {"critic_mixture_init_scale": 1e-3, **normalisation}
    model = mixture_model(learning_starts=50, policy_kwargs=policy_kwargs, **targets)
    model.learn(150)
    model.save(tmp_path / "model.zip")
    loaded = MPO.load(tmp_path / "model.zip", env=model.get_env())
    assert loaded.policy.critic_mixture == 3 and loaded.critic.distribution == "mixture"
    assert all(getattr(loaded, name) == value for name, value in targets.items())
    assert loaded.critic.mixture_scale_factor == model.critic.mixture_scale_factor
    assert loaded.critic.mixture_scale_factor == pytest.approx(1e-3 / np.log(2.0))
    assert loaded.policy.batch_renorm == bool(normalisation)
    th.testing.assert_close(loaded.policy.state_dict(), model.policy.state_dict())
    loaded.learn(50, reset_num_timesteps=False)
    assert loaded.num_timesteps == 200


@pytest.mark.parametrize(
    ("env", "kwargs", "policy_kwargs", "match"),
    [
        ("Pendulum-v1", {}, {"critic_mixture": 5}, "q_target='retrace'"),
        ("Pendulum-v1", {"q_target": "n_step"}, {"critic_mixture": 0}, "critic_mixture=0"),
        ("Pendulum-v1", {"q_target": "n_step"}, {"critic_mixture": 5, "critic_support": SUPPORT}, "one distributional critic"),
        ("CartPole-v1", {"q_target": "n_step"}, {"critic_mixture": 5}, "Discrete"),
        ("Pendulum-v1", {"q_target": "n_step"}, {"critic_mixture": 5, "critic_mixture_init_scale": 0.0}, r"init_scale'\]=0.0"),
        ("Pendulum-v1", {"q_target": "n_step"}, {"critic_mixture_init_scale": 1e-3}, "without critic_mixture"),
        ("Pendulum-v1", {"q_target": "n_step", "mixture_return_samples": 0}, {"critic_mixture": 5}, "return_samples=0"),
        ("Pendulum-v1", {"q_target": "n_step", "mixture_return_samples": 128}, {}, "without a mixture critic"),
        ("Pendulum-v1", {"q_target": "n_step", "mixture_quadrature_nodes": 3}, {}, "quadrature_nodes=3"),
        ("Pendulum-v1", {"q_target": "n_step", "mixture_quadrature_nodes": 0}, {"critic_mixture": 5}, "quadrature_nodes=0"),
        (
            "Pendulum-v1",
            {"q_target": "n_step", "mixture_quadrature_nodes": 3, "mixture_return_samples": 16},
            {"critic_mixture": 5},
            "points replace the draws",
        ),
    ],
)
def test_bad_mixture_critics_are_refused(env: str, kwargs: dict, policy_kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MPO("MlpPolicy", env, policy_kwargs=policy_kwargs, **kwargs)


# === With CrossQ's critic (batch_renorm: no target critic) ===


def normalised_passes(network: th.nn.Sequential, graded: th.Tensor, scored: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """The network layer by layer, every BatchRenorm (in its warm-up) normalising both inputs with the moments of the
    graded rows at that layer (mean and unbiased variance), as CrossQ's joint batch does."""
    for layer in network:
        if isinstance(layer, SharedBatchRenorm):
            mean, var = graded.mean(0), graded.var(0)
            graded, scored = (layer.scale * (x - mean) / th.sqrt(var + layer.eps) + layer.bias for x in (graded, scored))
        else:
            graded, scored = layer(graded), layer(scored)
    return graded, scored


@pytest.mark.parametrize("distribution", ["categorical", "mixture"])
def test_a_distributional_crossq_critic_targets_its_own_distributions_at_the_sampled_next_actions(distribution: str) -> None:
    """The stored pairs and the first sampled action at each next state set the normalisation; the targets are the
    critic's own distributions at the N sampled next actions under it (no target critic), computed here layer by layer;
    the loss is the cross-entropy to the projected mixture (categorical) or the likelihood of the shifted samples
    (mixture, with scipy)."""
    build = categorical_model if distribution == "categorical" else mixture_model
    model = build(learning_starts=10_000, policy_kwargs={"batch_renorm": True})
    model.learn(100)
    assert type(model.evaluation).__name__.lower().startswith(distribution)
    critic = model.critic
    assert isinstance(critic, SampledCritic) and critic.distribution == distribution
    with th.no_grad():  # a target critic unlike the critic: nothing may read it
        for parameter in model.critic_target.parameters():
            parameter.add_(th.randn_like(parameter))
    target_state = copy.deepcopy(model.critic_target.state_dict())
    reference = copy.deepcopy(critic.q_networks[0])
    batch = model.replay_buffer.sample(32)
    model.policy.set_training_mode(True)
    evaluation = model.evaluation.evaluate(batch)

    sampled = model.actor_target.squash(evaluation.improvement.actions)  # (N, B, A), π_old's samples at s'
    n_samples = sampled.shape[0]
    stored_pairs = th.cat([batch.observations, model.actor.squash(batch.actions)], -1)
    graded = th.cat([stored_pairs, th.cat([batch.next_observations, sampled[0]], -1)])
    rows = th.cat([batch.next_observations.expand(n_samples, -1, -1), sampled], -1).flatten(0, 1)
    with th.no_grad():
        graded_out, sampled_out = normalised_passes(reference, graded, rows)
    outputs, sampled_out = graded_out[:32].numpy(), sampled_out.reshape(n_samples, 32, -1)
    th.testing.assert_close(evaluation.improvement.q_values, critic.values(sampled_out), rtol=1e-4, atol=1e-4)
    shift, scale = batch.rewards.numpy(), (batch.discounts * (1 - batch.dones)).numpy()
    if distribution == "categorical":
        atoms = critic.atoms.numpy()
        next_probs = th.softmax(sampled_out, -1).mean(0).numpy()
        target = brute_force_projection(shift + scale * atoms, next_probs, atoms)
        log_probs = outputs - logsumexp(outputs, axis=-1, keepdims=True)
        expected = -np.mean((target * log_probs).sum(-1))
    else:
        samples = evaluation.improvement.value_samples
        assert samples is not None and samples.shape == (32, n_samples)
        targets = shift + scale * samples.numpy()
        logits, means, scales = (x.numpy() for x in critic.mixture(th.as_tensor(outputs)))
        weights = np.exp(logits - logsumexp(logits, axis=-1, keepdims=True))
        expected = -np.mean(
            [logsumexp(stats.norm.logpdf(targets[b, :, None], means[b], scales[b]), b=weights[b], axis=-1) for b in range(32)]
        )
    assert evaluation.critic_loss.item() == pytest.approx(expected, rel=1e-4)
    assert all(th.equal(value, model.critic_target.state_dict()[name]) for name, value in target_state.items())
