import itertools
import math

import numpy as np
import pytest
import torch as th

from sb3_mpo.mpo.retrace import retrace_targets


def naive_retrace(
    q: np.ndarray,
    expected_next_q: np.ndarray,
    rewards: np.ndarray,
    terminations: np.ndarray,
    episode_ends: np.ndarray,
    valid: np.ndarray,
    log_ratios: np.ndarray,
    gamma: float,
    lambda_: float,
) -> np.ndarray:
    """The Σ form of Retrace for one segment, with plain loops over time (no recursion), invalid steps set to 0."""
    length = len(q)
    targets = np.zeros(length)
    for t in range(length):
        if not valid[t]:
            continue
        total = q[t]
        weight = 1.0  # γ^{j−t} Π_{k=t+1..j} c_k
        for j in range(t, length):
            if j > t:
                if not valid[j] or episode_ends[j - 1] or terminations[j - 1]:
                    break
                weight *= gamma * lambda_ * min(1.0, math.exp(log_ratios[j]))
            bootstrap = 0.0 if terminations[j] else expected_next_q[j]
            total += weight * (rewards[j] + gamma * bootstrap - q[j])
        targets[t] = total
    return targets


def random_segments(batch: int, length: int, seed: int, mask_after_ends: bool = True) -> dict[str, np.ndarray]:
    """
    Random segments with terminations, truncations and invalid tails. ``valid`` is a prefix, cut after the first
    episode end as the buffer does it, or (``mask_after_ends=False``) left on after it: Retrace must cut there anyway.
    """
    rng = np.random.default_rng(seed)
    terminations = (rng.random((batch, length)) < 0.1).astype(np.float64)
    truncations = (rng.random((batch, length)) < 0.1).astype(np.float64) * (1 - terminations)
    episode_ends = np.maximum(terminations, truncations)
    n_stored = rng.integers(1, length + 1, size=batch)  # newest transition inside the segment for some rows
    ends_before = np.cumsum(episode_ends, axis=1) - episode_ends
    valid = (np.arange(length)[None] < n_stored[:, None]) & ((ends_before == 0) | (not mask_after_ends))
    return {
        "q": rng.normal(size=(batch, length)),
        "expected_next_q": rng.normal(size=(batch, length)),
        "rewards": rng.normal(size=(batch, length)),
        "terminations": terminations,
        "episode_ends": episode_ends,
        "valid": valid.astype(np.float64),
        "log_ratios": rng.normal(scale=1.0, size=(batch, length)),
    }


def run_retrace(data: dict[str, np.ndarray], gamma: float, lambda_: float) -> np.ndarray:
    tensors = {key: th.as_tensor(value) for key, value in data.items()}
    return retrace_targets(
        tensors["q"],
        tensors["expected_next_q"],
        tensors["rewards"],
        tensors["terminations"],
        tensors["episode_ends"],
        tensors["valid"],
        tensors["log_ratios"],
        gamma=gamma,
        lambda_=lambda_,
    ).numpy()


@pytest.mark.parametrize("mask_after_ends", [True, False])
@pytest.mark.parametrize("lambda_", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("length", [1, 2, 8])
def test_matches_naive_reference(lambda_: float, length: int, mask_after_ends: bool) -> None:
    data = random_segments(batch=64, length=length, seed=length, mask_after_ends=mask_after_ends)
    targets = run_retrace(data, gamma=0.97, lambda_=lambda_)
    for i in range(64):
        expected = naive_retrace(*(data[key][i] for key in data), gamma=0.97, lambda_=lambda_)
        np.testing.assert_allclose(targets[i], expected, rtol=1e-10, atol=1e-10)


def test_every_case_is_exercised() -> None:
    data = random_segments(batch=64, length=8, seed=8)
    valid = data["valid"].astype(bool)
    assert (data["terminations"].astype(bool) & valid).any()
    assert (data["episode_ends"].astype(bool) & ~data["terminations"].astype(bool) & valid).any()
    assert (~valid).any() and valid[:, 0].all()
    assert (valid[:, -1]).any()


def test_lambda_zero_is_one_step_expected_sarsa() -> None:
    data = random_segments(batch=32, length=8, seed=1)
    targets = run_retrace(data, gamma=0.9, lambda_=0.0)
    one_step = data["rewards"] + 0.9 * (1 - data["terminations"]) * data["expected_next_q"]
    np.testing.assert_allclose(targets, one_step * data["valid"], rtol=1e-12)


def n_step_return(data: dict[str, np.ndarray], gamma: float) -> np.ndarray:
    """Uncorrected n-step expected-SARSA return Σ γ^k r + γ^n (1 − term) E Q'(s_n), n running to the trace's end."""
    batch, length = data["q"].shape
    returns = np.zeros((batch, length))
    for i, t in itertools.product(range(batch), range(length)):
        if not data["valid"][i, t]:
            continue
        total, discount, j = 0.0, 1.0, t
        while True:
            total += discount * data["rewards"][i, j]
            last = j == length - 1 or data["episode_ends"][i, j] or not data["valid"][i, j + 1]
            if last:
                total += discount * gamma * (1 - data["terminations"][i, j]) * data["expected_next_q"][i, j]
                break
            discount *= gamma
            j += 1
        returns[i, t] = total
    return returns


def test_unit_traces_give_uncorrected_n_step_return_for_action_independent_critic() -> None:
    # c ≡ 1 (λ = 1, π = b); with Q'(s, a) = V(s), Q'(s_{j+1}, a_{j+1}) = E_π Q'(s_{j+1}, ·) and the control variates vanish
    data = random_segments(batch=32, length=8, seed=2)
    data["log_ratios"] = np.zeros_like(data["log_ratios"])
    data["q"][:, 1:] = data["expected_next_q"][:, :-1]
    targets = run_retrace(data, gamma=0.95, lambda_=1.0)
    np.testing.assert_allclose(targets, n_step_return(data, gamma=0.95), rtol=1e-10, atol=1e-10)


def test_unit_traces_differ_from_n_step_return_by_control_variates() -> None:
    # c ≡ 1 with an action-dependent critic: the n-step return plus Σ_{j>t} γ^{j−t} (E_π Q'(s_j) − Q'(s_j, a_j))
    data = random_segments(batch=32, length=8, seed=3)
    data["log_ratios"] = np.abs(data["log_ratios"])  # π ≥ b: the weights are truncated to 1
    targets = run_retrace(data, gamma=0.95, lambda_=1.0)
    n_step = n_step_return(data, gamma=0.95)
    batch, length = data["q"].shape
    for i, t in itertools.product(range(batch), range(length)):
        if not data["valid"][i, t]:
            continue
        control_variates, j = 0.0, t
        while j < length - 1 and data["valid"][i, j + 1] and not data["episode_ends"][i, j]:
            j += 1
            control_variates += 0.95 ** (j - t) * (data["expected_next_q"][i, j - 1] - data["q"][i, j])
        assert targets[i, t] == pytest.approx(n_step[i, t] + control_variates, rel=1e-10, abs=1e-10)


def test_on_policy_expectation_is_n_step_expected_sarsa() -> None:
    """
    A deterministic chain with two actions per state and a stochastic policy π = b: averaging the Retrace target of
    the first step over every action sequence a_1..a_{L-1} (weighted by its probability) gives the expected n-step
    expected-SARSA return, computed by the same enumeration.
    """
    rng = np.random.default_rng(4)
    length, n_states, gamma = 4, 16, 0.9
    probs = rng.dirichlet(np.ones(2), size=n_states)  # π(a|s)
    q_table = rng.normal(size=(n_states, 2))  # Q'(s, a)
    reward_table = rng.normal(size=(n_states, 2))
    next_state = rng.integers(0, n_states, size=(n_states, 2))
    v_table = (probs * q_table).sum(axis=1)  # E_π Q'(s, ·)

    rows, weights = [], []
    for tail in itertools.product(range(2), repeat=length - 1):
        actions, state, states, weight = (0, *tail), 0, [], 1.0
        for t, action in enumerate(actions):
            states.append(state)
            if t > 0:
                weight *= probs[state, action]
            state = next_state[state, action]
        next_states = [next_state[s, a] for s, a in zip(states, actions, strict=True)]
        rows.append(
            {
                "q": [q_table[s, a] for s, a in zip(states, actions, strict=True)],
                "expected_next_q": [v_table[s] for s in next_states],
                "rewards": [reward_table[s, a] for s, a in zip(states, actions, strict=True)],
            }
        )
        weights.append(weight)
    data = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    batch = len(rows)
    data.update(
        terminations=np.zeros((batch, length)),
        episode_ends=np.zeros((batch, length)),
        valid=np.ones((batch, length)),
        log_ratios=np.zeros((batch, length)),
    )
    weights_array = np.array(weights)
    assert weights_array.sum() == pytest.approx(1.0)

    targets = run_retrace(data, gamma=gamma, lambda_=1.0)
    expected_n_step = weights_array @ n_step_return(data, gamma)[:, 0]
    assert weights_array @ targets[:, 0] == pytest.approx(expected_n_step, rel=1e-10)
    # Not a tautology: sample by sample the two differ
    assert not np.allclose(targets[:, 0], n_step_return(data, gamma)[:, 0])


def test_truncation_keeps_bootstrap_and_cuts_trace() -> None:
    data = {
        "q": np.array([[1.0, 2.0, 3.0]]),
        "expected_next_q": np.array([[10.0, 20.0, 30.0]]),
        "rewards": np.array([[0.5, 0.25, 0.125]]),
        "terminations": np.zeros((1, 3)),
        "episode_ends": np.array([[0.0, 1.0, 0.0]]),
        "valid": np.array([[1.0, 1.0, 0.0]]),
        "log_ratios": np.zeros((1, 3)),
    }
    targets = run_retrace(data, gamma=0.5, lambda_=1.0)
    step_1 = 0.25 + 0.5 * 20.0
    step_0 = 0.5 + 0.5 * 10.0 + 0.5 * (step_1 - 2.0)
    np.testing.assert_allclose(targets, [[step_0, step_1, 0.0]])
    data["terminations"] = data["episode_ends"].copy()
    targets = run_retrace(data, gamma=0.5, lambda_=1.0)
    np.testing.assert_allclose(targets[0, 1], 0.25)
    # a termination ends the episode even where episode_ends was left at 0
    data["episode_ends"] = np.zeros((1, 3))
    data["terminations"] = np.array([[1.0, 0.0, 0.0]])
    data["valid"] = np.ones((1, 3))
    np.testing.assert_allclose(run_retrace(data, gamma=0.5, lambda_=1.0)[0, 0], 0.5)


def test_truncated_importance_weights() -> None:
    data = {
        "q": np.array([[0.0, 1.0]]),
        "expected_next_q": np.array([[2.0, 3.0]]),
        "rewards": np.zeros((1, 2)),
        "terminations": np.zeros((1, 2)),
        "episode_ends": np.zeros((1, 2)),
        "valid": np.ones((1, 2)),
        "log_ratios": np.array([[5.0, math.log(0.25)]]),
    }
    # step 1 target: γ·3 = 1.5; step 0: γ·2 + γ·λ·0.25·(1.5 − 1)
    targets = run_retrace(data, gamma=0.5, lambda_=0.8)
    assert targets[0, 0] == pytest.approx(1.0 + 0.5 * 0.8 * 0.25 * 0.5)
    data["log_ratios"] = np.array([[0.0, 3.0]])  # π/b > 1 is truncated to 1
    targets = run_retrace(data, gamma=0.5, lambda_=0.8)
    assert targets[0, 0] == pytest.approx(1.0 + 0.5 * 0.8 * 0.5)


def test_invalid_steps_are_finite_and_do_not_leak() -> None:
    data = random_segments(batch=16, length=6, seed=5)
    reference = run_retrace(data, gamma=0.99, lambda_=0.9)
    invalid = data["valid"] == 0
    for key in ("q", "expected_next_q", "rewards", "log_ratios"):
        data[key] = np.where(invalid, np.nan, data[key])
    data["expected_next_q"] = np.where(data["terminations"] == 1, np.inf, data["expected_next_q"])
    targets = run_retrace(data, gamma=0.99, lambda_=0.9)
    assert np.isfinite(targets).all()
    np.testing.assert_allclose(targets, reference)
    assert (targets[invalid] == 0).all()


def test_float32_batched_and_shape_checks() -> None:
    data = random_segments(batch=4, length=5, seed=6)
    tensors = [th.as_tensor(data[key], dtype=th.float32) for key in data]
    targets = retrace_targets(*tensors, gamma=0.99, lambda_=0.95)
    assert targets.shape == (4, 5) and targets.dtype == th.float32
    np.testing.assert_allclose(targets.numpy(), run_retrace(data, 0.99, 0.95), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rewards"):
        retrace_targets(tensors[0], tensors[1], tensors[2][:, :3], *tensors[3:], gamma=0.99, lambda_=0.95)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_model_retrace_loss_matches_a_separate_pass_over_the_observations(env_id: str) -> None:
    """
    The model scores a_{t+1} at s_{t+1} inside its one target forward at the next observations. The critic loss equals
    the one computed with Q'(s_t, a_t) and log pi_old(a_t|s_t) from a second, separate pass over the observations,
    on segments that hold episode ends (5-step episodes).
    """
    import gymnasium as gym

    from sb3_mpo import MPO
    from sb3_mpo.mpo.evaluation import _flatten_time
    from sb3_mpo.mpo.policies import CategoricalActor

    env = gym.make(env_id, max_episode_steps=5)
    model = MPO("MlpPolicy", env, seed=0, learning_starts=50, batch_size=64, policy_kwargs=dict(net_arch=[32, 32]))
    model.learn(200)
    segments = model.replay_buffer.sample(16)
    assert (segments.episode_ends[:, :-1] * segments.valid[:, 1:]).sum() == 0  # segments stop at episode ends
    assert segments.valid.min() == 0 and segments.episode_ends.max() == 1

    th.manual_seed(3)
    loss = model.evaluation.evaluate(segments).critic_loss

    n_segments, length = segments.rewards.shape
    observations = _flatten_time(segments.observations)
    actions = segments.actions.reshape(n_segments * length, -1)
    th.manual_seed(3)  # the same action samples at the next observations
    targets, _ = model.improvement.target_values(_flatten_time(segments.next_observations))
    with th.no_grad():
        taken_q = model.improvement.taken_q_values(model.critic_target, observations, actions).reshape(n_segments, length)
        if isinstance(model.actor_target, CategoricalActor):
            log_probs = model.actor_target.log_probs(observations).gather(1, actions.long()).squeeze(-1)
        else:
            mean, std = model.actor_target.distribution_params(observations)
            log_probs = th.distributions.Normal(mean, std).log_prob(actions).sum(-1)
    expected_targets = retrace_targets(
        taken_q,
        targets.expected_q().reshape(n_segments, length),
        segments.rewards,
        segments.terminations,
        segments.episode_ends,
        segments.valid,
        log_probs.reshape(n_segments, length) - segments.behaviour_log_probs,
        model.gamma,
        model.retrace_lambda,
    )
    valid = segments.valid.reshape(-1) > 0.5
    with th.no_grad():
        current = model.improvement.taken_q_values(model.critic, observations, actions).reshape(-1)[valid]
    expected = 0.5 * th.mean((current - expected_targets.reshape(-1)[valid]) ** 2)
    th.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
