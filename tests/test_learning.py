"""Learning test at a small budget: MPO with its shipped Pendulum-v1 settings must actually learn the task."""

import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_mpo import MPO
from sb3_mpo.common.hyperparams import load_hyperparams

SEED = 0
BUDGET = 10_000
EVAL_EVERY = 2_000
THRESHOLD = -400.0  # a random policy scores about -1200; SAC's RL Zoo result at 20k steps is -157 ± 89


#: The critics a user can pick, each of which must learn the task: the entry's, CrossQ's (BatchRenorm, no target critic),
#: a pair of CrossQ's whose smallest value counts (clipped double Q-learning), a categorical one over returns in
#: [-1700, 100], a mixture of 5 Gaussians: policy_kwargs, and other constructor arguments
CRITICS = {
    "target_critic": ({}, {}),
    "crossq_critic": ({"batch_renorm": True}, {}),
    "crossq_critic_pair": ({"batch_renorm": True, "n_critics": 2}, {}),
    "categorical_critic": ({"critic_support": (-1700.0, 100.0), "n_atoms": 51}, {}),
    "mixture_critic": ({"critic_mixture": 5}, {}),
}
#: Options of those critics, checked by hand (``-m slow``: each took 5-6 minutes of CI's suite, whose unit tests cover
#: their paths): the mixture's targets by quadrature, and the mixture with CrossQ's normalisation
SLOW_CRITICS = {
    "mixture_critic_quadrature": ({"critic_mixture": 5}, {"mixture_quadrature_nodes": 3}),
    "crossq_mixture_critic": ({"batch_renorm": True, "critic_mixture": 5}, {}),
}


@pytest.mark.parametrize(
    "policy_kwargs, kwargs",
    [*CRITICS.values(), *(pytest.param(*critic, marks=pytest.mark.slow) for critic in SLOW_CRITICS.values())],
    ids=[*CRITICS, *SLOW_CRITICS],
)
def test_pendulum_learns_within_10k_steps(policy_kwargs, kwargs):
    """Mean deterministic return over 10 episodes reaches -400 within 10k steps (evaluated every 2k) for a fixed seed,
    with each critic."""
    hyperparams = {**load_hyperparams("Pendulum-v1"), **kwargs}
    hyperparams["policy_kwargs"] = {**hyperparams.get("policy_kwargs", {}), **policy_kwargs}
    model = MPO("MlpPolicy", "Pendulum-v1", seed=SEED, **hyperparams)
    eval_env = make_vec_env("Pendulum-v1", n_envs=1, seed=10_000 + SEED)
    returns = []
    while model.num_timesteps < BUDGET:
        model.learn(EVAL_EVERY, reset_num_timesteps=False)
        mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
        returns.append(round(mean))
        if mean >= THRESHOLD:
            break
    assert max(returns) >= THRESHOLD, f"evaluation returns every {EVAL_EVERY} steps: {returns}"
