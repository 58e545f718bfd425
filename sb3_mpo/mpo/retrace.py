"""Retrace critic targets over batches of trajectory segments."""

import torch as th


def retrace_targets(
    q_values: th.Tensor,
    expected_next_q: th.Tensor,
    rewards: th.Tensor,
    terminations: th.Tensor,
    episode_ends: th.Tensor,
    valid: th.Tensor,
    log_ratios: th.Tensor,
    gamma: float,
    lambda_: float,
) -> th.Tensor:
    """
    Retrace targets (Munos et al. 2016, "Safe and efficient off-policy reinforcement learning", arXiv 1606.02647)
    for every step of a batch of trajectory segments, as used by MPO's policy evaluation
    (Abdolmaleki et al. 2018, arXiv 1806.06920, Sec. 4, Eq. (13)):

    Q_ret(s_t, a_t) = Q'(s_t, a_t)
                      + Σ_{j≥t} γ^{j−t} (Π_{k=t+1..j} c_k) [r_j + γ (1 − term_j) E_π Q'(s_{j+1}, ·) − Q'(s_j, a_j)]

    with the truncated importance weights c_k = λ · min(1, π(a_k|s_k) / b(a_k|s_k)), the sum cut after the step where
    the episode ends (termination or truncation) and before any invalid step. It is computed by one reverse scan over
    the L steps, vectorised over the batch:

    Q_ret_t = r_t + γ (1 − term_t) E_π Q'(s_{t+1}, ·) + γ c_{t+1} (Q_ret_{t+1} − Q'(s_{t+1}, a_{t+1}))

    where the last term is dropped if the episode ended at t, if step t+1 is invalid, or at t = L − 1.
    λ = 0 gives the 1-step expected-SARSA target; on-policy (π = b, λ = 1) its expectation over the actions is the
    n-step expected-SARSA return. With c ≡ 1 it equals the uncorrected n-step return plus the zero-mean (on-policy)
    control variates γ^{j−t} (E_π Q'(s_j, ·) − Q'(s_j, a_j)), j > t, which vanish when Q' does not depend on the action.

    Every input has shape (B, L) and the same dtype; the flags are 0/1 (float or bool). The expectation E_π is
    usually estimated with N samples of the target policy, averaged by the caller. Call it under ``th.no_grad()``
    to get constant targets.

    :param q_values: Q'(s_t, a_t) of the target critic at the stored actions; the value at t = 0 is not used
    :param expected_next_q: E_{a ~ π(·|s_{t+1})} Q'(s_{t+1}, a), with s_{t+1} the next observation of step t
        (the terminal observation at the end of an episode)
    :param rewards: r_t
    :param terminations: 1 where s_{t+1} is terminal (no bootstrap); a termination also ends the episode
    :param episode_ends: 1 where the episode ends at step t, by termination or time-limit truncation
    :param valid: 1 for the steps that belong to the segment
    :param log_ratios: log π(a_t|s_t) − log b(a_t|s_t) of the stored actions; the value at t = 0 is not used
    :param gamma: Discount factor γ
    :param lambda_: Trace decay λ in [0, 1]
    :return: Q_ret(s_t, a_t), shape (B, L); 0 at invalid steps, which are finite whatever the inputs hold there
    """
    shape = q_values.shape
    inputs = {
        "expected_next_q": expected_next_q,
        "rewards": rewards,
        "terminations": terminations,
        "episode_ends": episode_ends,
        "valid": valid,
        "log_ratios": log_ratios,
    }
    if q_values.dim() != 2:
        raise ValueError(f"retrace_targets expects inputs of shape (batch, segment_length), got q_values {tuple(shape)}")
    for name, tensor in inputs.items():
        if tensor.shape != shape:
            raise ValueError(f"retrace_targets: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")

    valid_mask = valid > 0.5
    terminal = terminations > 0.5
    ended = (episode_ends > 0.5) | terminal
    zero = th.zeros((), dtype=q_values.dtype, device=q_values.device)

    bootstrap = th.where(terminal, zero, expected_next_q)
    one_step = th.where(valid_mask, rewards + gamma * bootstrap, zero)
    # c_k = λ min(1, π/b); clamping the log-ratio first keeps exp() finite
    traces = th.where(valid_mask, lambda_ * th.exp(th.clamp(log_ratios, max=0.0)), zero)
    corrections = th.where(valid_mask, q_values, zero)
    # The trace flows from t + 1 back into t only inside one episode of the segment
    continues = valid_mask[:, :-1] & valid_mask[:, 1:] & ~ended[:, :-1]

    segment_length = shape[1]
    targets = [one_step[:, -1]]
    for t in range(segment_length - 2, -1, -1):
        correction = traces[:, t + 1] * (targets[-1] - corrections[:, t + 1])
        targets.append(one_step[:, t] + gamma * th.where(continues[:, t], correction, zero))
    return th.stack(targets[::-1], dim=1)
