"""
Checks of the hyperparameters rl_zoo3 is about to pass to MPO, so that a typo or a wrong type in a hyperparameter
file (or in ``--hyperparams``) stops the run before any environment is built, with a message naming the key.
"""

from typing import Any

from sb3_mpo.common.checks import (
    check_arguments,
    check_known_keys,
    check_policy_kwargs,
    constructor_parameters,
    matches_annotation,
    yaml_hint,
)
from sb3_mpo.common.hyperparams import SCHEDULED_RATES
from sb3_mpo.mpo import MPO

#: Constructor arguments that rl_zoo3 sets from its command line, with the flag to use instead
SET_BY_RL_ZOO: dict[str, str] = {
    "env": "--env",
    "seed": "--seed",
    "verbose": "--verbose",
    "device": "--device",
    "tensorboard_log": "--tensorboard-log",
}


#: Hyperparameters of rl_zoo3's entries for other algorithms that MPO has no use for, with what MPO does instead: a
#: closest-name suggestion would mislead there (SAC's ``ent_coef`` is not MPO's ``penalty_cost``)
OTHER_ALGORITHMS_KEYS: dict[str, str] = {
    **dict.fromkeys(("noise_type", "noise_std"), "MPO's Gaussian policy explores by itself, with no action noise added"),
    **dict.fromkeys(
        ("ent_coef", "target_entropy"),
        "SAC's entropy bonus: MPO's E-step temperature follows its KL bound 'epsilon', and the policy's spread moves "
        "within 'epsilon_std'",
    ),
    **dict.fromkeys(
        ("use_sde", "sde_sample_freq", "use_sde_at_warmup"),
        "gSDE's state-dependent noise: MPO's Gaussian policy samples independent noise at every step",
    ),
    "policy_delay": "TD3's delayed policy updates: MPO updates its policy at every gradient step, within its trust "
    "region 'epsilon_mean' / 'epsilon_std'",
    **dict.fromkeys(
        ("target_policy_noise", "target_noise_clip"),
        "TD3's target smoothing: MPO's targets average the critic over 'n_action_samples' actions of its policy",
    ),
    "top_quantiles_to_drop_per_net": "TQC's truncated quantiles: MPO's distributional critics are policy_kwargs' "
    "critic_support (categorical) and critic_mixture (Gaussian mixture)",
}


def check_mpo_hyperparams(hyperparams: dict[str, Any], algo_class: type[MPO] = MPO) -> None:
    """
    Check the hyperparameters rl_zoo3 will pass to MPO's constructor (after its own pre-processing: schedules built,
    ``policy_kwargs`` strings evaluated), with the checks of MPO's constructor (:mod:`sb3_mpo.common.checks`): every
    key must be a constructor argument, every value must fit its type and range, and ``policy_kwargs`` must fit the
    policy's constructor. The checks that involve several arguments (``buffer_size >= batch_size``) and the action
    space are left to the constructor.

    :param hyperparams: The keyword arguments for MPO's constructor
    :param algo_class: The algorithm class (MPO or a subclass)
    :raises ValueError: naming the first key that is unknown, set elsewhere, or whose value is invalid
    """
    owner = algo_class.__name__
    for key, instead in OTHER_ALGORITHMS_KEYS.items():
        if key in hyperparams:
            raise ValueError(f"Hyperparameter {key!r} is not used by MPO ({instead}): remove it")
    for key, flag in SET_BY_RL_ZOO.items():
        if key in hyperparams:
            raise ValueError(f"Hyperparameter {key!r} is set by rl_zoo3's {flag} flag: remove it from the hyperparameters")
    parameters = constructor_parameters(algo_class)
    check_known_keys(hyperparams, parameters, owner, "{key!r}", SET_BY_RL_ZOO)
    check_arguments(owner, hyperparams, parameters)

    policy = hyperparams.get("policy", "MlpPolicy")
    policy_class = algo_class.policy_aliases.get(policy) if isinstance(policy, str) else policy
    policy_kwargs = hyperparams.get("policy_kwargs")
    if isinstance(policy_class, type) and isinstance(policy_kwargs, dict):
        check_policy_kwargs(owner, policy_class, policy_kwargs)


def check_zoo_entry(hyperparams: dict[str, Any]) -> None:
    """
    Check the values that rl_zoo3 parses itself before it builds MPO's arguments, whose own errors would not name
    the key: ``n_timesteps``, a ``lin_<float>`` learning-rate schedule (the actor's own too; a boolean, which rl_zoo3
    would take for the number 1, is refused), and the Python expressions it evaluates.

    :param hyperparams: One entry of a hyperparameter file, merged with ``--hyperparams``
    :raises ValueError: naming the first key whose value rl_zoo3 could not parse
    """
    n_timesteps = hyperparams.get("n_timesteps")
    if not matches_annotation(n_timesteps, float):
        raise ValueError(f"Hyperparameter 'n_timesteps'={n_timesteps!r} must be a number (rl_zoo3 needs it even with -n)")
    for key in SCHEDULED_RATES:
        rate = hyperparams.get(key)
        if isinstance(rate, bool):  # rl_zoo3 would make True a constant schedule of 1.0
            raise ValueError(f"Hyperparameter {key!r}={rate!r} is neither a number nor a linear schedule 'lin_<float>'")
        if isinstance(rate, str):
            schedule, _, initial_value = rate.partition("_")
            try:
                float(initial_value)
            except ValueError:
                schedule = ""
            if schedule != "lin":
                raise ValueError(
                    f"Hyperparameter {key!r}={rate!r} is neither a number nor a linear schedule 'lin_<float>'{yaml_hint(rate)}"
                )
    for key in ("policy_kwargs", "replay_buffer_class", "replay_buffer_kwargs", "monitor_kwargs", "normalize"):
        expression = hyperparams.get(key)
        if isinstance(expression, str):
            try:
                compile(expression, key, "eval")
            except SyntaxError as error:
                message = f"Hyperparameter {key!r}={expression!r} is not a valid Python expression: {error.msg}"
                raise ValueError(message) from error
