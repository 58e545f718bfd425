import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy, ContinuousCritic
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
    create_mlp,
    get_actor_critic_arch,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.dqn.policies import QNetwork
from torch import nn
from torch.nn import functional as F

from sb3_mpo.common.checks import constructor_default, is_integer
from sb3_mpo.mpo.losses import categorical_mean, clipped_gaussian_mean, clipped_values, inverse_positive, mixture_mean
from sb3_mpo.mpo.torsos import (
    batch_renorm_torso,
    layer_norm_input_block,
    residual_torso,
    sampled_pass,
    with_batch_statistics,
    with_running_statistics,
)

ActionBounding = Literal["clip", "tanh"]
ACTION_BOUNDINGS: tuple[str, ...] = ("clip", "tanh")
#: The action of ``predict(deterministic=True)``: the policy's mode squashed into the box, or (with clipped actions)
#: the mean of the clipped Gaussian, the average action the behaviour policy executes
DeterministicAction = Literal["mode", "mean"]
DETERMINISTIC_ACTIONS: tuple[str, ...] = ("mode", "mean")
#: Adam's arguments that choose its implementation (the same update, computed differently)
ADAM_IMPLEMENTATIONS: frozenset[str] = frozenset({"fused", "foreach", "capturable", "differentiable"})
#: Pairs of those that Adam refuses together
CONFLICTING_IMPLEMENTATIONS: frozenset[frozenset[str]] = frozenset(
    {frozenset({"fused", "foreach"}), frozenset({"fused", "differentiable"})}
)
CriticDistribution = Literal["expected", "categorical", "mixture"]


class MPOActor(BasePolicy):
    """
    What MPO's actors share: an MLP head on features that, with a shared extractor, belong to the critic.

    :param observation_space: Observation space
    :param action_space: Action space
    :param net_arch: Hidden layers of the policy network
    :param features_extractor: Network to extract features
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    :param share_features_extractor: Whether the features extractor is shared with (and trained by) the critic;
        the actor then reads the features without back-propagating into them
    :param squash_output: Whether the actions are squashed into the action space's box (SB3's ``BasePolicy`` flag)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        share_features_extractor: bool = False,
        squash_output: bool = False,
    ):
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
            squash_output=squash_output,
        )
        self.net_arch = net_arch
        self.features_dim = features_dim
        self.activation_fn = activation_fn
        self.share_features_extractor = share_features_extractor

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                features_dim=self.features_dim,
                activation_fn=self.activation_fn,
                features_extractor=self.features_extractor,
                share_features_extractor=self.share_features_extractor,
            )
        )
        return data

    def actor_features(self, obs: PyTorchObs) -> th.Tensor:
        """The features of ``obs``; no gradient reaches a features extractor shared with the critic."""
        with th.set_grad_enabled(th.is_grad_enabled() and not self.share_features_extractor):
            return self.extract_features(obs, self.features_extractor)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self(observation, deterministic)


class GaussianActor(MPOActor):
    """
    Diagonal Gaussian actor for MPO: state-dependent mean and standard deviation, the latter bounded below.

    The Gaussian lives in an unbounded space ``u``; the action in the normalised box [-1, 1] is ``squash(u)``, either
    a clip (unbounded Gaussian, the scheme of DeepMind's MPO, paired with the action penalty of MO-MPO) or a tanh.
    Replay stores ``u`` so that log-densities, KLs and importance ratios are exact Gaussian quantities; the critic
    and the environment only ever see ``squash(u)``.

    :param observation_space: Observation space
    :param action_space: Action space
    :param net_arch: Hidden layers of the policy network
    :param features_extractor: Network to extract features
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    :param init_std: Standard deviation of the untrained policy (in normalised action units)
    :param min_std: Lower bound of the standard deviation
    :param action_bounding: How actions are mapped into the box: ``"clip"`` or ``"tanh"``
    :param share_features_extractor: Whether the features extractor is shared with (and trained by) the critic;
        the actor then reads the features without back-propagating into them
    :param deterministic_action: The action of a deterministic prediction: ``"mode"``, squash(μ), or ``"mean"``,
        E[clip(u)] for u ~ N(μ, σ²) (:func:`~sb3_mpo.mpo.losses.clipped_gaussian_mean`; ``action_bounding="clip"``
        only). Training never reads it: it only changes what ``predict(deterministic=True)`` returns
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        init_std: float = 0.5,
        min_std: float = 1e-4,
        action_bounding: ActionBounding = "clip",
        share_features_extractor: bool = False,
        deterministic_action: DeterministicAction = "mode",
    ):
        super().__init__(
            observation_space,
            action_space,
            net_arch,
            features_extractor,
            features_dim,
            activation_fn,
            normalize_images,
            share_features_extractor,
            squash_output=True,
        )
        if action_bounding not in ACTION_BOUNDINGS:
            raise ValueError(
                f"GaussianActor: action_bounding={action_bounding!r} is invalid, expected one of {ACTION_BOUNDINGS}"
            )
        if deterministic_action not in DETERMINISTIC_ACTIONS:
            raise ValueError(
                f"GaussianActor: deterministic_action={deterministic_action!r} is invalid, "
                f"expected one of {DETERMINISTIC_ACTIONS}"
            )
        if deterministic_action == "mean" and action_bounding != "clip":
            raise ValueError(
                f"GaussianActor: deterministic_action='mean' is invalid with action_bounding={action_bounding!r}: the mean "
                "of the clipped Gaussian needs action_bounding='clip' (with 'tanh', use deterministic_action='mode')"
            )
        if not 0 < min_std < init_std:
            raise ValueError(
                f"GaussianActor: min_std={min_std!r} and init_std={init_std!r} are invalid, expected 0 < min_std < init_std"
            )
        self.init_std = init_std
        self.min_std = min_std
        self.action_bounding = action_bounding
        self.deterministic_action = deterministic_action

        action_dim = get_action_dim(self.action_space)
        self.latent_pi = nn.Sequential(*create_mlp(features_dim, -1, net_arch, activation_fn))
        last_layer_dim = net_arch[-1] if len(net_arch) > 0 else features_dim
        self.mu = nn.Linear(last_layer_dim, action_dim)
        self.std = nn.Linear(last_layer_dim, action_dim)
        # The untrained network outputs about zero, so this offset sets the initial standard deviation
        self.std_offset = inverse_positive(init_std, floor=min_std)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                init_std=self.init_std,
                min_std=self.min_std,
                action_bounding=self.action_bounding,
                deterministic_action=self.deterministic_action,
            )
        )
        return data

    def distribution_params(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """
        :param obs: Observation batch
        :return: Mean and standard deviation of the Gaussian over ``u``, each of shape (B, A)
        """
        latent = self.latent_pi(self.actor_features(obs))
        std = F.softplus(self.std(latent) + self.std_offset) + self.min_std
        return self.mu(latent), std

    def squash(self, raw_actions: th.Tensor) -> th.Tensor:
        """
        :param raw_actions: Gaussian samples ``u``
        :return: Actions in the normalised box [-1, 1]
        """
        if self.action_bounding == "tanh":
            return th.tanh(raw_actions)
        return raw_actions.clamp(-1.0, 1.0)

    def unsquash(self, actions: np.ndarray) -> np.ndarray:
        """
        A preimage of normalised actions under :meth:`squash`, used to store actions chosen outside the policy
        (uniform warm-up actions).

        :param actions: Actions in [-1, 1]
        :return: The Gaussian-space actions ``u`` with ``squash(u) == actions`` (up to the tanh's clipping at 1 - 1e-6)
        """
        if self.action_bounding == "tanh":
            return np.arctanh(np.clip(actions, -1.0 + 1e-6, 1.0 - 1e-6))
        return actions

    def uniform_log_density(self, raw_actions: np.ndarray) -> np.ndarray:
        """
        Log-density, in the Gaussian space ``u``, of actions drawn uniformly from the normalised box and mapped through
        :meth:`unsquash` (the warm-up behaviour policy): −A·log 2, plus log(1 − tanh²(u)) per dimension for tanh.

        :param raw_actions: Gaussian-space actions, shape (n, A)
        :return: log b(u), shape (n,)
        """
        log_density = -raw_actions.shape[-1] * np.log(2.0) * np.ones(raw_actions.shape[:-1])
        if self.action_bounding == "tanh":
            log_density += np.sum(np.log1p(-np.tanh(raw_actions) ** 2 + 1e-12), axis=-1)
        return log_density

    def sample_raw(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        """
        :param obs: Observation batch
        :param deterministic: Return the mean instead of a sample
        :return: Gaussian-space actions ``u``, shape (B, A)
        """
        mean, std = self.distribution_params(obs)
        if deterministic:
            return mean
        return mean + std * th.randn_like(mean)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        if deterministic and self.deterministic_action == "mean":
            return clipped_gaussian_mean(*self.distribution_params(obs))
        return self.squash(self.sample_raw(obs, deterministic))


class CategoricalActor(MPOActor):
    """
    Categorical actor for MPO on a ``Discrete`` action space: an MLP from the features to one logit per action.

    :param observation_space: Observation space
    :param action_space: Action space
    :param net_arch: Hidden layers of the policy network
    :param features_extractor: Network to extract features
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param normalize_images: Whether to normalize images or not, dividing by 255.0
    :param share_features_extractor: Whether the features extractor is shared with (and trained by) the critic;
        the actor then reads the features without back-propagating into them
    """

    action_space: spaces.Discrete

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        share_features_extractor: bool = False,
    ):
        super().__init__(
            observation_space,
            action_space,
            net_arch,
            features_extractor,
            features_dim,
            activation_fn,
            normalize_images,
            share_features_extractor,
        )
        self.logits = nn.Sequential(*create_mlp(features_dim, int(action_space.n), net_arch, activation_fn))

    def log_probs(self, obs: PyTorchObs) -> th.Tensor:
        """
        :param obs: Observation batch
        :return: log π(a|s) of every action, shape (B, n_actions)
        """
        return F.log_softmax(self.logits(self.actor_features(obs)), dim=-1)

    def sample(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """
        :param obs: Observation batch
        :return: Sampled action indices, shape (B,), and their log-probabilities, shape (B,)
        """
        log_probs = self.log_probs(obs)
        actions = th.multinomial(log_probs.exp(), num_samples=1)
        return actions.squeeze(-1), log_probs.gather(-1, actions).squeeze(-1)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        if deterministic:
            return self.log_probs(obs).argmax(dim=-1)
        return self.sample(obs)[0]


class SampledCritic(ContinuousCritic):
    """
    Q-network of MPO: SB3's :class:`ContinuousCritic` (one network, or with ``n_critics`` an ensemble whose smallest
    value is the target's and the E-step's, as in clipped double Q-learning), plus an evaluation of many sampled actions
    per state that runs the features extractor once per state, not once per sample. It may be distributional (one
    network only): with ``critic_support`` a categorical critic (logits over ``n_atoms`` evenly spaced returns), with
    ``critic_mixture`` a mixture of that many Gaussians (log-weights, means and standard deviations); its Q-value is
    then the mean of its distribution. See :class:`~stable_baselines3.common.policies.ContinuousCritic` for the other
    parameters.

    :param critic_support: (v_min, v_max) of a categorical critic's support
    :param n_atoms: Number of atoms of a categorical critic's support
    :param critic_mixture: Number of Gaussian components of a mixture critic
    :param critic_mixture_init_scale: A mixture critic's components' standard deviations are
        ``critic_mixture_init_scale / softplus(0) · softplus(x) + min_scale`` of the network's outputs x, so that they
        start near ``critic_mixture_init_scale`` (Acme's ``init_scale``); ``None``: ``softplus(x) + min_scale``
    """

    #: Smallest standard deviation of a mixture critic's components
    min_scale: ClassVar[float] = 1e-3
    atoms: th.Tensor | None

    def __init__(
        self,
        *args: Any,
        critic_support: tuple[float, float] | None = None,
        n_atoms: int = 51,
        critic_mixture: int | None = None,
        critic_mixture_init_scale: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        q_network = self.q_networks[0]
        assert isinstance(q_network, nn.Sequential), "SB3's create_mlp builds the critic as an nn.Sequential"
        last = q_network[-1]
        assert isinstance(last, nn.Linear), "SB3's create_mlp ends a Q-network with a Linear layer"
        atoms = None
        self.distribution: CriticDistribution = "expected"
        distributional = critic_support is not None or critic_mixture is not None
        assert not distributional or len(self.q_networks) == 1, "a distributional critic has one network (n_critics=1)"
        if critic_support is not None:
            self.distribution = "categorical"
            q_network[-1] = nn.Linear(last.in_features, n_atoms)
            atoms = th.linspace(float(critic_support[0]), float(critic_support[1]), n_atoms)
        elif critic_mixture is not None:
            self.distribution = "mixture"
            q_network[-1] = nn.Linear(last.in_features, 3 * critic_mixture)
        self.register_buffer("atoms", atoms)  # None (no buffer) unless categorical
        # softplus(0) = log 2: the factor that makes a zero output the initial scale
        self.mixture_scale_factor = 1.0 if critic_mixture_init_scale is None else critic_mixture_init_scale / math.log(2.0)
        # Each activation of the MLP follows a Linear layer, whose backward does not need its output: activations may
        # overwrite it, which saves one (N·B x width) allocation per hidden layer in the large sampled forward
        for network in self.q_networks:
            for module in network.modules():
                if getattr(module, "inplace", None) is False:
                    setattr(module, "inplace", True)  # noqa: B010  (nn.Module attribute typing)

    def mixture(self, outputs: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        :param outputs: A mixture critic's outputs, shape (..., 3·M)
        :return: The mixtures' log-weights, means and standard deviations (softplus, times the initial scale's factor, plus
            ``min_scale``), each (..., M)
        """
        logits, means, raw_scales = outputs.chunk(3, dim=-1)
        return logits, means, self.mixture_scale_factor * F.softplus(raw_scales) + self.min_scale

    def values(self, outputs: th.Tensor) -> th.Tensor:
        """
        :param outputs: The network's outputs, shape (..., 1), (..., n_atoms) logits of a categorical critic, or
            (..., 3·M) of a mixture critic
        :return: The Q-values they stand for (the means of the distributions), shape (...)
        """
        if self.distribution == "categorical":
            assert self.atoms is not None
            return categorical_mean(outputs, self.atoms)
        if self.distribution == "mixture":
            logits, means, _ = self.mixture(outputs)
            return mixture_mean(logits, means)
        return outputs.squeeze(-1)

    def sampled_outputs(self, obs: PyTorchObs, actions: th.Tensor, hidden_dtype: th.dtype = th.float32) -> th.Tensor:
        """
        The network's outputs for N actions per state, its first layer's features half computed once per state
        (:func:`~sb3_mpo.mpo.torsos.sampled_pass`). CrossQ's critic (``batch_renorm``) normalises them with its running
        statistics, as in evaluation mode (:func:`~sb3_mpo.mpo.torsos.with_running_statistics`); its training pass is
        :meth:`joint_outputs`.

        :param obs: Observation batch of B states
        :param actions: N actions per state, shape (N, B, A)
        :param hidden_dtype: Floating-point type of the matrix products of the hidden ``Linear`` layers after the
            first, residual blocks' included, and of the activations between two of them (see
            :func:`~sb3_mpo.mpo.torsos.modules_in`); the first layer and the activation after it, the normalisations,
            the last hidden activation and the output layer run in float32, so that the outputs keep float32's
            resolution
        :return: The outputs, shape (N, B, 1) (an ensemble's smallest value), (N, B, n_atoms) logits for a categorical
            critic, or (N, B, 3·M) for a mixture of M Gaussians (:meth:`mixture`)
        """
        features = self.extract_features(obs, self.features_extractor)  # MPO's critic trains its extractor (make_critic)
        outputs = [
            sampled_pass(with_running_statistics(network.children()), features, actions, hidden_dtype)
            for network in self.q_networks
        ]
        return self.clipped(outputs)

    def clipped(self, outputs: list[th.Tensor]) -> th.Tensor:
        """
        :param outputs: The outputs of each Q-network for the same pairs, each (..., out_features)
        :return: Those of the one network, or the smallest value of an ensemble (clipped double Q-learning,
            :func:`~sb3_mpo.mpo.losses.clipped_values`), (..., 1)
        """
        return outputs[0] if len(outputs) == 1 else clipped_values(th.stack(outputs))

    def joint_outputs(
        self,
        obs: PyTorchObs,
        actions: th.Tensor,
        next_obs: PyTorchObs,
        next_actions: th.Tensor,
        in_statistics: th.Tensor | None = None,
        hidden_dtype: th.dtype = th.float32,
    ) -> tuple[th.Tensor, th.Tensor]:
        """
        CrossQ's forward (Bhatt et al. 2024), for a critic with :class:`~sb3_mpo.mpo.torsos.SharedBatchRenorm` layers
        and no target network: the stored pairs (s, a) and the pairs (s', a'₁) of the first sampled action at each next
        state form one batch, whose statistics every BatchRenorm layer normalises with, so that the values the critic
        regresses and those its targets are made of are normalised alike. The N sampled actions per next state are then
        scored with the same statistics, without gradient (:func:`~sb3_mpo.mpo.torsos.with_batch_statistics`), in the
        factored pass of :meth:`sampled_outputs`: the input's normalisation, fixed there, is folded into the first
        layer.

        :param obs: Observation batch of B states, the stored pairs' states
        :param actions: Their stored actions (squashed into the box), shape (B, A)
        :param next_obs: Observation batch of B' next states
        :param next_actions: N actions per next state (squashed into the box), shape (N, B', A)
        :param in_statistics: Which next states join the statistics with their first action, shape (B',) (None: all)
        :param hidden_dtype: Floating-point type of the sampled rows' matrix products
        :return: The outputs of the stored pairs, (B, out_features) with gradient (an ensemble's values side by side,
            (B, n_critics)), and of the sampled actions, (N, B', out_features): one value each (an ensemble's smallest),
            or a distributional critic's logits or mixture parameters
        """
        features = self.extract_features(obs, self.features_extractor)
        next_features = self.extract_features(next_obs, self.features_extractor)
        first = th.cat([next_features, next_actions[0]], dim=-1)
        graded = th.cat([th.cat([features, actions], dim=-1), first if in_statistics is None else first[in_statistics]])
        graded_outputs, sampled_outputs = [], []
        for network in self.q_networks:
            outputs, fixed_layers = with_batch_statistics(network.children(), graded)
            graded_outputs.append(outputs[: features.shape[0]])
            with th.no_grad():
                sampled_outputs.append(sampled_pass(fixed_layers, next_features, next_actions, hidden_dtype))
        return th.cat(graded_outputs, dim=-1), self.clipped(sampled_outputs)

    def sampled_q_values(self, obs: PyTorchObs, actions: th.Tensor, hidden_dtype: th.dtype = th.float32) -> th.Tensor:
        """
        Q-values of N actions per state (see :meth:`sampled_outputs`).

        :param obs: Observation batch of B states
        :param actions: N actions per state, shape (N, B, A)
        :param hidden_dtype: Floating-point type of the hidden layers' matrix products (see :meth:`sampled_outputs`)
        :return: Q(s, a_j), shape (N, B)
        """
        return self.values(self.sampled_outputs(obs, actions, hidden_dtype))


def critic_output_layers(critic: SampledCritic | QNetwork) -> list[nn.Linear]:
    """
    :param critic: A critic of MPO's (one Q-network, or an ensemble with ``n_critics``) or SB3's DQN network (one
        output per action)
    :return: The last linear layer of each of its Q-networks: the layers whose outputs are the values
    """
    networks = list(critic.q_networks) if isinstance(critic, SampledCritic) else [critic.get_submodule("q_net")]
    layers = [list(network.children())[-1] for network in networks]
    assert all(isinstance(layer, nn.Linear) for layer in layers), "SB3's create_mlp ends a Q-network with a Linear layer"
    return layers  # type: ignore[return-value]


class MPOPolicy(BasePolicy):
    """
    Policy class (actor, critic and their target copies) for MPO. A ``Box`` action space gets a Gaussian actor and a
    critic Q(s, a) of sampled actions; a ``Discrete`` one gets a categorical actor and SB3's DQN Q-network, which
    outputs Q(s, a) for every action.

    :param observation_space: Observation space
    :param action_space: Action space
    :param lr_schedule: Learning rate schedule (could be constant)
    :param net_arch: The specification of the policy and Q networks (a list, or a dict with keys ``pi`` and ``qf``)
    :param activation_fn: Activation function
    :param init_std: Standard deviation of the untrained policy, in normalised action units ([-1, 1]) (``Box`` only)
    :param min_std: Lower bound of the policy's standard deviation (``Box`` only)
    :param action_bounding: ``"clip"`` (unbounded Gaussian, actions clipped into the box) or ``"tanh"`` (squashed
        Gaussian); see docs/results/action_bounding.md for the measured comparison (``Box`` only)
    :param deterministic_action: What ``predict(deterministic=True)`` returns: ``"mode"``, the Gaussian's mean squashed
        into the box, or ``"mean"``, the mean of the clipped Gaussian, the average action the behaviour policy executes
        (``action_bounding="clip"``, ``Box`` only); training is the same with either
    :param features_extractor_class: Features extractor to use.
    :param features_extractor_kwargs: Keyword arguments to pass to the features extractor.
    :param normalize_images: Whether to normalize images or not, dividing by 255.0 (True by default)
    :param optimizer_class: The optimizer to use, ``th.optim.Adam`` by default
    :param optimizer_kwargs: Additional keyword arguments, excluding the learning rate, to pass to the optimizer
    :param actor_optimizer_kwargs: Keyword arguments of the actor's optimizer alone, which replace those of
        ``optimizer_kwargs`` with the same name (e.g. ``dict(betas=(0.5, 0.99))``: a second moment that follows the
        actor's gradient ten times faster, while the critic keeps ``optimizer_kwargs``); ``None``: the actor's optimizer
        takes ``optimizer_kwargs`` as the critic's does
    :param share_features_extractor: Whether to share the features extractor between the actor and the critic.
        Unlike SAC, a shared extractor is trained by the critic loss: MPO's policy loss is a weighted likelihood
        that carries no value information.
    :param layer_norm: Give the actor's and the critic's MLPs the input block of Acme's ``LayerNormMLP``: the first
        hidden layer is Linear → LayerNorm → tanh, the others keep ``activation_fn`` (Acme's MPO: ``nn.ELU``);
        see :func:`~sb3_mpo.mpo.torsos.layer_norm_input_block`
    :param residual: Give the actor's and the critic's MLPs SimBa's residual form: the first layer embeds, then one
        residual block per hidden layer (LayerNorm → Linear(h, 4h) → ``activation_fn`` → Linear(4h, h), added to its
        input), then a LayerNorm; every hidden layer of a network must have the same width. See
        :func:`~sb3_mpo.mpo.torsos.residual_torso`
    :param critic_support: (v_min, v_max): make the critic categorical (distributional), with ``n_atoms`` evenly spaced
        atoms from v_min to v_max, trained by cross-entropy against projected targets (``Box`` only, with
        ``q_target="n_step"``); returns outside the support are clipped to its ends. ``None``: a critic of expected
        values
    :param n_atoms: Number of atoms of a categorical critic's support
    :param critic_mixture: Make the critic a mixture of this many Gaussians (Acme's MPO default: 5), trained on samples
        of the target critic's mixtures (Shahriari et al. 2022); ``Box`` only, with ``q_target="n_step"``; not with
        ``critic_support``
    :param critic_mixture_init_scale: With ``critic_mixture``: the standard deviation near which the components start
        (Acme's ``mog_init_scale``, 1e-3, scales the softplus by 1e-3 / softplus(0)); ``None``: the plain softplus, which
        starts them near softplus(0) = 0.69 (see :class:`SampledCritic`)
    :param batch_renorm: Give the critic CrossQ's normalisation (Bhatt et al. 2024): a BatchRenorm layer before each of
        its Linear layers (:func:`~sb3_mpo.mpo.torsos.batch_renorm_torso`), and no target critic: its targets and the
        E-step's values come from the critic itself, in one batch with the stored pairs
        (:meth:`SampledCritic.joint_outputs`). The target policy stays, as π_old of the trust regions. ``Box`` only; with
        a distributional critic (``critic_support`` or ``critic_mixture``) the critic's own distributions at the sampled
        next actions, taken without gradient, make the targets; not with ``residual``
    :param batch_norm_momentum: With ``batch_renorm``: the rate at which the running statistics follow the batches'
    :param renorm_warmup_steps: With ``batch_renorm``: gradient steps that normalise with each batch's own statistics
        before the running ones renormalise them (CrossQ's 100,000: a run of up to 100k updates is batch-normalised
        throughout)
    :param n_critics: Number of Q-networks (SB3's name, as in SAC, TD3 and CrossQ): each regresses the same targets,
        which, like the E-step, read the smallest of their values at the sampled actions (clipped double Q-learning,
        Fujimoto et al. 2018). ``Box`` only, with a critic of expected values; MPO's paper and Acme use one
    """

    actor: GaussianActor | CategoricalActor
    actor_target: GaussianActor | CategoricalActor
    critic: SampledCritic | QNetwork
    critic_target: SampledCritic | QNetwork

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box | spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        init_std: float = 0.5,
        min_std: float = 1e-4,
        action_bounding: ActionBounding = "clip",
        deterministic_action: DeterministicAction = "mode",
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        actor_optimizer_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = False,
        layer_norm: bool = False,
        residual: bool = False,
        critic_support: tuple[float, float] | None = None,
        n_atoms: int = 51,
        critic_mixture: int | None = None,
        critic_mixture_init_scale: float | None = None,
        batch_renorm: bool = False,
        batch_norm_momentum: float = 0.01,
        renorm_warmup_steps: int = 100_000,
        n_critics: int = 1,
    ):
        self.check_distributional_critic(action_space, critic_support, n_atoms, critic_mixture)
        self.check_n_critics(n_critics, action_space, critic_support is not None or critic_mixture is not None)
        if batch_renorm:
            self.check_batch_renorm(action_space, residual)
        self.check_settings_in_use(
            action_space,
            init_std=init_std,
            min_std=min_std,
            action_bounding=action_bounding,
            deterministic_action=deterministic_action,
            n_atoms=(n_atoms, critic_support is None, "without critic_support, whose atoms it counts"),
            critic_mixture_init_scale=(
                critic_mixture_init_scale,
                critic_mixture is None,
                "without critic_mixture, whose components' initial scale it sets",
            ),
            batch_norm_momentum=(batch_norm_momentum, not batch_renorm, "without batch_renorm, whose statistics it sets"),
            renorm_warmup_steps=(renorm_warmup_steps, not batch_renorm, "without batch_renorm, whose warm-up it sets"),
        )
        if residual and layer_norm:
            raise ValueError(
                "MPOPolicy: residual=True is invalid with layer_norm=True, expected one of the two torsos (SimBa's "
                "residual blocks normalise every block's input already)"
            )
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=True,
            normalize_images=normalize_images,
        )
        self.actor_optimizer_kwargs = actor_optimizer_kwargs
        self.optimizer_kwargs = self.default_optimizer_kwargs(self.optimizer_class, self.optimizer_kwargs)
        if net_arch is None:
            net_arch = [256, 256]
        actor_arch, critic_arch = get_actor_critic_arch(net_arch)
        if residual and not all(arch and len(set(arch)) == 1 for arch in (actor_arch, critic_arch)):
            raise ValueError(
                f"MPOPolicy: net_arch={net_arch!r} is invalid with residual=True, expected hidden layers of one width "
                "in each network (e.g. [256, 256]: an embedding of width 256 and two residual blocks)"
            )

        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.share_features_extractor = share_features_extractor
        self.layer_norm = layer_norm
        self.residual = residual
        self.batch_renorm = batch_renorm
        self.batch_norm_momentum = batch_norm_momentum
        self.renorm_warmup_steps = renorm_warmup_steps
        common = {
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "activation_fn": self.activation_fn,
            "normalize_images": normalize_images,
            "share_features_extractor": share_features_extractor,
        }
        self.actor_kwargs = {
            **common,
            "net_arch": actor_arch,
            "init_std": init_std,
            "min_std": min_std,
            "action_bounding": action_bounding,
            "deterministic_action": deterministic_action,
        }
        self.critic_kwargs = {**common, "net_arch": critic_arch, "n_critics": n_critics}
        # A tuple of floats, also when a saved model's policy_kwargs come back as a list
        self.critic_support = None if critic_support is None else (float(critic_support[0]), float(critic_support[1]))
        self.n_atoms, self.critic_mixture = n_atoms, critic_mixture
        self.critic_mixture_init_scale = critic_mixture_init_scale
        if self.critic_support is not None:
            self.critic_kwargs.update(critic_support=self.critic_support, n_atoms=n_atoms)
        if critic_mixture is not None:
            self.critic_kwargs.update(critic_mixture=critic_mixture, critic_mixture_init_scale=critic_mixture_init_scale)
        self._build(lr_schedule)

    @staticmethod
    def check_settings_in_use(action_space: spaces.Space, **settings: Any) -> None:
        """
        Refuse a setting that would do nothing: one of the Gaussian actor's with a ``Discrete`` action space (given by
        value), or one given with the condition under which it is unused and why (a tuple).

        :raises ValueError: naming the first such setting that is not its default, and what is expected
        """
        for name, given in settings.items():
            value, unused, why = given if isinstance(given, tuple) else (given, isinstance(action_space, spaces.Discrete), "")
            default = constructor_default(MPOPolicy, name)
            if unused and value != default:
                why = why or "with a Discrete action space (the categorical actor has no Gaussian)"
                raise ValueError(f"MPOPolicy: {name}={value!r} is invalid {why}, expected its default {default!r}")

    @staticmethod
    def check_distributional_critic(
        action_space: spaces.Space,
        critic_support: tuple[float, float] | None,
        n_atoms: int,
        critic_mixture: int | None,
    ) -> None:
        """:raises ValueError: naming the argument when they cannot make a distributional critic"""
        if critic_support is None and critic_mixture is None:
            return
        name, value = ("critic_support", critic_support) if critic_support is not None else ("critic_mixture", critic_mixture)
        if isinstance(action_space, spaces.Discrete):
            raise ValueError(
                f"MPOPolicy: {name}={value!r} is invalid with a Discrete action space, expected None (distributional "
                "critics are for Box actions; a Discrete critic already outputs every action's value)"
            )
        if critic_support is not None and critic_mixture is not None:
            raise ValueError(
                f"MPOPolicy: critic_mixture={critic_mixture!r} is invalid with critic_support={critic_support!r}, "
                "expected one distributional critic: categorical (critic_support) or a Gaussian mixture (critic_mixture)"
            )
        if critic_mixture is not None and critic_mixture < 1:
            raise ValueError(f"MPOPolicy: critic_mixture={critic_mixture!r} is invalid, expected an integer >= 1")
        if critic_support is None:
            return
        if len(critic_support) != 2 or not all(np.isfinite(critic_support)) or not critic_support[0] < critic_support[1]:
            raise ValueError(
                f"MPOPolicy: critic_support={critic_support!r} is invalid, expected finite (v_min, v_max) with v_min < v_max"
            )
        if n_atoms < 2:
            raise ValueError(f"MPOPolicy: n_atoms={n_atoms!r} is invalid, expected an integer >= 2")

    @staticmethod
    def check_n_critics(n_critics: int, action_space: spaces.Space, distributional: bool) -> None:
        """:raises ValueError: naming ``n_critics`` when it cannot make the critic"""
        if not is_integer(n_critics) or n_critics < 1:
            raise ValueError(f"MPOPolicy: n_critics={n_critics!r} is invalid, expected an integer >= 1")
        if n_critics == 1:
            return
        if isinstance(action_space, spaces.Discrete):
            raise ValueError(
                f"MPOPolicy: n_critics={n_critics!r} is invalid with a Discrete action space, expected 1 (categorical MPO "
                "reads the exact values of every action from one network)"
            )
        if distributional:
            raise ValueError(
                f"MPOPolicy: n_critics={n_critics!r} is invalid with a distributional critic (critic_support or "
                "critic_mixture), expected 1 (the smallest of several values is defined for expected values only)"
            )

    @staticmethod
    def check_batch_renorm(action_space: spaces.Space, residual: bool) -> None:
        """:raises ValueError: naming the argument that cannot go with ``batch_renorm=True``"""
        if isinstance(action_space, spaces.Discrete):
            raise ValueError(
                "MPOPolicy: batch_renorm=True is invalid with a Discrete action space, expected False (CrossQ's critic "
                "scores sampled actions of a Box space)"
            )
        if residual:
            raise ValueError(
                "MPOPolicy: batch_renorm=True is invalid with residual=True, expected one of the two (SimBa's blocks "
                "normalise every block's input already)"
            )

    def _build(self, lr_schedule: Schedule) -> None:
        self.critic = self.make_critic()
        if self.share_features_extractor:
            # The critic owns (and trains) the shared extractor; the actor reads its features
            self.actor = self.make_actor(features_extractor=self.critic.features_extractor)
            actor_parameters = [param for name, param in self.actor.named_parameters() if "features_extractor" not in name]
        else:
            self.actor = self.make_actor()
            actor_parameters = list(self.actor.parameters())
        # Targets never share an extractor with the online networks
        self.actor_target = self.make_actor(features_extractor=None)
        self.critic_target = self.make_critic(features_extractor=None)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_target.set_training_mode(False)
        self.critic_target.set_training_mode(False)
        self.actor_target.requires_grad_(False)
        self.critic_target.requires_grad_(False)

        self.actor.optimizer = self.optimizer_class(
            actor_parameters, lr=lr_schedule(1), **self.actor_optimizer_settings()  # type: ignore[call-arg]
        )
        self.critic.optimizer = self.optimizer_class(
            self.critic.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs  # type: ignore[call-arg]
        )

    @staticmethod
    def default_optimizer_kwargs(
        optimizer_class: type[th.optim.Optimizer], optimizer_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """
        Adam runs its fused implementation (one kernel per parameter group, on CPU as on GPU) unless the caller chose an
        implementation: the same update as the default per-tensor loop, about five times faster on CPU.

        :param optimizer_class: The optimiser class
        :param optimizer_kwargs: The caller's keyword arguments
        :return: The keyword arguments to use
        """
        if optimizer_class is th.optim.Adam and not ADAM_IMPLEMENTATIONS & optimizer_kwargs.keys():
            return {**optimizer_kwargs, "fused": True}
        return optimizer_kwargs

    def actor_optimizer_settings(self) -> dict[str, Any]:
        """
        :return: The keyword arguments of the actor's optimizer: ``optimizer_kwargs`` with ``actor_optimizer_kwargs`` in
            place of the keys they share, less the shared implementation choices that the actor's own exclude (Adam's
            ``fused``, the default, where the actor's choose ``foreach``)
        """
        actor_kwargs = self.actor_optimizer_kwargs or {}
        excluded = {key for pair in CONFLICTING_IMPLEMENTATIONS if pair & actor_kwargs.keys() for key in pair}
        shared = {key: value for key, value in self.optimizer_kwargs.items() if key not in excluded}
        return self.default_optimizer_kwargs(self.optimizer_class, {**shared, **actor_kwargs})

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                activation_fn=self.activation_fn,
                init_std=self.actor_kwargs["init_std"],
                min_std=self.actor_kwargs["min_std"],
                action_bounding=self.actor_kwargs["action_bounding"],
                deterministic_action=self.actor_kwargs["deterministic_action"],
                lr_schedule=self._dummy_schedule,  # dummy lr schedule, not needed for loading policy alone
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
                actor_optimizer_kwargs=self.actor_optimizer_kwargs,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
                share_features_extractor=self.share_features_extractor,
                layer_norm=self.layer_norm,
                residual=self.residual,
                critic_support=self.critic_support,
                n_atoms=self.n_atoms,
                critic_mixture=self.critic_mixture,
                critic_mixture_init_scale=self.critic_mixture_init_scale,
                batch_renorm=self.batch_renorm,
                batch_norm_momentum=self.batch_norm_momentum,
                renorm_warmup_steps=self.renorm_warmup_steps,
                n_critics=self.critic_kwargs["n_critics"],
            )
        )
        return data

    @property
    def discrete(self) -> bool:
        """Whether the action space is ``Discrete`` (categorical actor, one Q-value per action)."""
        return isinstance(self.action_space, spaces.Discrete)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> GaussianActor | CategoricalActor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        if features_extractor is None:
            actor_kwargs["share_features_extractor"] = False
        if self.discrete:
            for gaussian_only in ("init_std", "min_std", "action_bounding", "deterministic_action"):
                actor_kwargs.pop(gaussian_only)
            actor: GaussianActor | CategoricalActor = CategoricalActor(**actor_kwargs)
            network = actor.get_submodule("logits")
        else:
            actor = GaussianActor(**actor_kwargs)
            network = actor.get_submodule("latent_pi")
        self._shape_torso(network)
        return actor.to(self.device)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> SampledCritic | QNetwork:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        # A critic always trains its own extractor (shared or not); only the actor reads a borrowed one
        critic_kwargs["share_features_extractor"] = False
        if self.discrete:
            # SB3's DQN network: the features go through an MLP with one output per action
            for continuous_only in ("n_critics", "share_features_extractor"):
                critic_kwargs.pop(continuous_only)
            critic: SampledCritic | QNetwork = QNetwork(**critic_kwargs)
            networks = [critic.get_submodule("q_net")]
        else:
            critic = SampledCritic(**critic_kwargs)
            networks = list(critic.q_networks)
        for network in networks:
            self._shape_torso(network)
            if self.batch_renorm:
                batch_renorm_torso(network, self.batch_norm_momentum, self.renorm_warmup_steps)
        return critic.to(self.device)

    def _shape_torso(self, network: nn.Module) -> None:
        """Give a freshly built MLP of the actor or the critic the torso the policy was asked for."""
        if self.layer_norm:
            layer_norm_input_block(network)
        if self.residual:
            residual_torso(network, self.activation_fn)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        """
        The actor's actions for a batch of observations.

        :param obs: Observation batch
        :param deterministic: Take the Gaussian's mean or the most probable action instead of a sample
        :return: Actions in the normalised box [-1, 1] (clipped or squashed) for a ``Box`` space, action indices
            for a ``Discrete`` one
        """
        return self._predict(obs, deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.actor(observation, deterministic)

    def unscale_action(self, scaled_action: np.ndarray) -> np.ndarray:
        """
        SB3's rescaling from the normalised box [-1, 1] to the action space's bounds, clipped to those bounds: the
        clipped Gaussian puts actions on the box's faces routinely, and the rescaling of ±1 in float32 can land one
        rounding step beyond a bound (e.g. 0.5070865 for a high of 0.50708646), which the environment would receive.

        :param scaled_action: Actions in [-1, 1]
        :return: Actions within the action space's bounds
        """
        assert isinstance(self.action_space, spaces.Box)
        return np.clip(super().unscale_action(scaled_action), self.action_space.low, self.action_space.high)

    def set_training_mode(self, mode: bool) -> None:
        """
        Put the policy in either training or evaluation mode (targets always stay in evaluation mode).

        :param mode: if true, set to training mode, else set to evaluation mode
        """
        self.actor.set_training_mode(mode)
        self.critic.set_training_mode(mode)
        self.training = mode


MlpPolicy = MPOPolicy


class CnnPolicy(MPOPolicy):
    """
    :class:`MPOPolicy` with SB3's NatureCNN features extractor, for image observations.
    See :class:`MPOPolicy` for the parameters.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box | spaces.Discrete,
        lr_schedule: Schedule,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        **kwargs: Any,
    ):
        super().__init__(
            observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs
        )


class MultiInputPolicy(MPOPolicy):
    """
    :class:`MPOPolicy` with SB3's CombinedExtractor, for Dict observations.
    See :class:`MPOPolicy` for the parameters.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box | spaces.Discrete,
        lr_schedule: Schedule,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        **kwargs: Any,
    ):
        super().__init__(
            observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs
        )
