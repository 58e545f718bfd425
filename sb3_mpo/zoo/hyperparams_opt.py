"""
Optuna search space of MPO for rl_zoo3's hyperparameter optimisation (``train --algo mpo -optimize``).

As in rl_zoo3, the sampler suggests raw values (``one_minus_gamma``, ``batch_size_pow``, a ``net_arch`` name, ...)
and the converter turns them into MPO's constructor arguments; rl_zoo3 calls the converter again on a stored trial's
parameters when training is resumed from a study with ``--storage ... --study-name ... --trial-id N``.
"""

from typing import Any

import optuna
from rl_zoo3.hyperparams_opt import sample_her_params
from torch import nn

#: Hidden layers of the actor and the critic for each ``net_arch`` choice (the names of rl_zoo3's off-policy samplers)
NET_ARCHS: dict[str, list[int]] = {
    "small": [64, 64],
    "medium": [256, 256],
}

#: The policy's torso options for each ``torso`` choice: SB3's MLP, Acme's LayerNorm input block with ELU (the shipped
#: MuJoCo entries'), or SimBa's residual blocks
TORSOS: dict[str, dict[str, Any]] = {
    "mlp": {},
    "layer_norm": {"layer_norm": True, "activation_fn": nn.ELU},
    "residual": {"residual": True},
}

#: The critic of each ``critic`` choice (with n-step targets): expected values, or Acme's mixture of 5 Gaussians
CRITICS: dict[str, dict[str, Any]] = {"expected": {}, "mixture": {"critic_mixture": 5}}

#: The critic's normalisation of each ``critic_normalization`` choice: none (with its target network), or CrossQ's
#: BatchRenorm without a target critic
CRITIC_NORMALIZATIONS: dict[str, dict[str, Any]] = {"none": {}, "batch_renorm": {"batch_renorm": True}}

#: The critic target of each ``q_target`` choice: MPO's ``(q_target, n_steps)``
CRITIC_TARGETS: dict[str, tuple[str, int]] = {
    "retrace": ("retrace", 1),
    "1-step": ("n_step", 1),
    "3-step": ("n_step", 3),
    "5-step": ("n_step", 5),
}


def sample_mpo_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict[str, Any]) -> dict[str, Any]:
    """
    Sample MPO hyperparameters: the learning rate and Adam's beta1 (PyTorch's 0.9, or CrossQ's 0.5), the batch, the
    E-step bound ``epsilon``, the critic target (Retrace or 1-, 3- or 5-step returns, ``tau``, ``gamma``), the share of
    replay in each batch (``replay_fraction``), the network size and torso (:data:`TORSOS`); then the settings of the
    action space's policy. With ``Box`` actions: ``n_action_samples``, the M-step trust regions (``epsilon_mean``,
    ``epsilon_std``), how actions are bounded, the kind of policy improvement (``policy_improvement``) and, with n-step
    targets, the critic (expected values or a Gaussian mixture, with its ``mixture_return_samples``: :data:`CRITICS`;
    Retrace is written for expected values), where it is accepted, CrossQ's normalisation of the critic
    (:data:`CRITIC_NORMALIZATIONS`), and for a critic of expected values one network or a pair (``n_critics``). With
    ``Discrete`` actions: the categorical trust region ``epsilon_policy`` (the
    E-step and the critic target enumerate the actions, so there is no sample count to tune).
    Scales spanning decades are sampled in log space.

    :param trial: The Optuna trial that records the suggestions
    :param n_actions: rl_zoo3's number of action dimensions: the size of a ``Box`` action space, and 0 for every other
        space (rl_zoo3 sets it for ``Box`` spaces only), which is how the sampler tells ``Discrete`` actions apart
    :param n_envs: Number of environments (unused)
    :param additional_args: rl_zoo3's extra information on the run. With SB3's ``HerReplayBuffer``
        (``using_her_replay_buffer``) the critic target is 1-step returns and every batch is replayed, the only
        settings MPO takes with that buffer, and HER's goal relabelling is searched as rl_zoo3 searches it for SAC
        (its ``sample_her_params``, on top of the entry's ``her_kwargs``)
    :return: Keyword arguments for MPO's constructor
    """
    her = bool(additional_args.get("using_her_replay_buffer", False))
    sampled: dict[str, Any] = {
        # gamma in [0.97, 0.9999], as in rl_zoo3's SAC / TD3 samplers
        "one_minus_gamma": trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
        # The actor at that rate or below it: the M-step's trust regions bound its steps only after it has taken them,
        # and Acme trains policy and critic at 1e-4, a tenth of the MuJoCo entry's CrossQ rate (docs/algorithm.md)
        "actor_learning_rate_ratio": trial.suggest_categorical("actor_learning_rate_ratio", [1.0, 0.3, 0.1]),
        # CrossQ's 0.5 (Bhatt et al. 2024, sb3-contrib's default there) led one of two HalfCheetah-v5 screening seeds
        "adam_beta1": trial.suggest_categorical("adam_beta1", [0.9, 0.5]),
        # The actor's Adam alone may forget its second moment ten times sooner, which shrank the MuJoCo entry's
        # trust-region excursions in probes (docs/algorithm.md)
        "actor_adam_beta2": trial.suggest_categorical("actor_adam_beta2", [0.999, 0.99]),
        # From 2**6=64 to 2**9=512
        "batch_size_pow": trial.suggest_int("batch_size_pow", 6, 9),
        "epsilon": trial.suggest_float("epsilon", 0.01, 1.0, log=True),
        "q_target": "1-step" if her else trial.suggest_categorical("q_target", list(CRITIC_TARGETS)),
        # Polyak coefficient of the target networks
        "tau": trial.suggest_float("tau", 0.001, 0.05, log=True),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCHS)),
        "torso": trial.suggest_categorical("torso", list(TORSOS)),
        # Pure replay (the default), or a quarter or half of each batch from the newest data
        "replay_fraction": 1.0 if her else trial.suggest_categorical("replay_fraction", [1.0, 0.75, 0.5]),
    }
    if her:
        sampled = sample_her_params(trial, sampled, additional_args.get("her_kwargs", {}))
    if n_actions > 0:
        sampled["n_action_samples"] = trial.suggest_categorical("n_action_samples", [10, 20, 40])
        sampled["epsilon_mean"] = trial.suggest_float("epsilon_mean", 1e-4, 1e-2, log=True)
        sampled["epsilon_std"] = trial.suggest_float("epsilon_std", 1e-6, 1e-4, log=True)
        sampled["action_bounding"] = trial.suggest_categorical("action_bounding", ["clip", "tanh"])
        # The M-step keeps the policy's standard deviation near where it starts (docs/algorithm.md): SAC-like noise to
        # Acme's 0.7
        sampled["init_std"] = trial.suggest_categorical("init_std", [0.1, 0.2, 0.5, 0.7])
        sampled["policy_improvement"] = trial.suggest_categorical("policy_improvement", ["nonparametric", "parametric"])
        if sampled["policy_improvement"] == "parametric":
            # Pathwise gradients need few samples; 20 is n_action_samples' default
            sampled["parametric_samples"] = trial.suggest_categorical("parametric_samples", [1, 4, 20])
        if sampled["q_target"] != "retrace":
            sampled["critic"] = trial.suggest_categorical("critic", list(CRITICS))
            if sampled["critic"] == "mixture":
                # Returns drawn at each sampled next action for the mixture's likelihood: one, or up to Acme's 128, whose
                # N·Z log-densities per transition make an update several times as costly on a CPU
                sampled["mixture_return_samples"] = trial.suggest_categorical("mixture_return_samples", [1, 16, 128])
        # where CrossQ's critic is accepted: not with SimBa's torso or the parametric improvement
        if sampled["torso"] != "residual" and sampled["policy_improvement"] == "nonparametric":
            sampled["critic_normalization"] = trial.suggest_categorical("critic_normalization", list(CRITIC_NORMALIZATIONS))
        # One critic (MPO's paper, Acme) or a pair whose smallest value counts (clipped double Q), for expected values
        if sampled.get("critic", "expected") == "expected":
            sampled["n_critics"] = trial.suggest_categorical("n_critics", [1, 2])
    else:
        # Around the default 1e-2, which learned CartPole-v1 on 4 of 5 seeds (docs/results/discrete.md)
        sampled["epsilon_policy"] = trial.suggest_float("epsilon_policy", 1e-3, 1e-1, log=True)
    # Display the true values next to the raw ones
    trial.set_user_attr("gamma", 1 - sampled["one_minus_gamma"])
    trial.set_user_attr("batch_size", 2 ** sampled["batch_size_pow"])
    return convert_mpo_params(sampled)


def convert_mpo_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """
    Turn the raw values suggested by :func:`sample_mpo_params` (or stored in a study) into MPO's constructor arguments.

    :param sampled_params: Optuna's parameters of a trial
    :return: Keyword arguments for MPO's constructor
    """
    hyperparams = sampled_params.copy()
    # A stored trial of a search with HerReplayBuffer holds HER's relabelling settings, which go to the buffer
    her_settings = {key: hyperparams.pop(key) for key in ("n_sampled_goal", "goal_selection_strategy") if key in hyperparams}
    if her_settings:
        hyperparams["replay_buffer_kwargs"] = {**hyperparams.get("replay_buffer_kwargs", {}), **her_settings}
    hyperparams["gamma"] = 1 - hyperparams.pop("one_minus_gamma")
    hyperparams["batch_size"] = 2 ** hyperparams.pop("batch_size_pow")
    # Studies from before the actor's own rate was searched trained the actor at learning_rate
    actor_ratio = hyperparams.pop("actor_learning_rate_ratio", 1.0)
    if actor_ratio != 1.0:
        hyperparams["actor_learning_rate"] = actor_ratio * hyperparams["learning_rate"]
    if "q_target" in hyperparams:
        hyperparams["q_target"], hyperparams["n_steps"] = CRITIC_TARGETS[hyperparams["q_target"]]
    else:  # a study from before Retrace was searched: it sampled n_steps alone
        hyperparams["q_target"] = "n_step"
    # Studies from before the torso and the critic were searched sampled neither: SB3's MLP, expected values
    hyperparams["policy_kwargs"] = {
        "net_arch": NET_ARCHS[hyperparams.pop("net_arch")],
        **TORSOS[hyperparams.pop("torso", "mlp")],
        **CRITICS[hyperparams.pop("critic", "expected")],
        **CRITIC_NORMALIZATIONS[hyperparams.pop("critic_normalization", "none")],
    }
    for policy_setting in ("action_bounding", "init_std", "n_critics"):
        if policy_setting in hyperparams:
            hyperparams["policy_kwargs"][policy_setting] = hyperparams.pop(policy_setting)
    # Studies from before Adam's betas were searched kept PyTorch's (0.9, 0.999), for actor and critic
    beta1 = hyperparams.pop("adam_beta1", None)
    if beta1 is not None:
        hyperparams["policy_kwargs"]["optimizer_kwargs"] = {"betas": (beta1, 0.999)}
    actor_beta2 = hyperparams.pop("actor_adam_beta2", 0.999)
    if actor_beta2 != 0.999:
        hyperparams["policy_kwargs"]["actor_optimizer_kwargs"] = {"betas": (0.9 if beta1 is None else beta1, actor_beta2)}
    return hyperparams
