"""
The building blocks of MPO's networks, which options of :class:`~sb3_mpo.mpo.policies.MPOPolicy` (its
``policy_kwargs``) build into SB3's MLPs: Acme's LayerNorm input block, SimBa's residual torso and CrossQ's BatchRenorm
critic. Also the critic's pass over N sampled actions per state: its first layer computed once per state, its hidden
layers in bfloat16 if asked, its normalisations with the statistics of another batch if given.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, cast

import torch as th
from sb3_contrib.common.torch_layers import BatchRenorm1d
from torch import nn
from torch.nn import functional as F


def layer_norm_input_block(network: nn.Module) -> None:
    """
    Turn the first hidden layer of an MLP built by SB3's ``create_mlp`` ([Linear, activation, Linear, ...]) into the
    input block of DeepMind Acme's ``LayerNormMLP``: Linear → LayerNorm → tanh, the later layers keeping their
    activation (Acme's MPO uses ELU there). Furuta et al. 2021 ("Co-Adaptation of Algorithmic and Implementational
    Innovations in Inference-based Deep Reinforcement Learning", arXiv 2103.17258) found this normalisation critical
    for MPO. A network without hidden layers is left as it is.

    :param network: The MLP (an ``nn.Sequential``), changed in place
    """
    if not isinstance(network, nn.Sequential):
        raise TypeError(f"layer_norm_input_block needs an nn.Sequential MLP, got {type(network).__name__}")
    if len(network) >= 2 and isinstance(network[0], nn.Linear):
        network[1] = nn.Sequential(nn.LayerNorm(network[0].out_features), nn.Tanh())


def linear_as(dtype: th.dtype, layer: "nn.Linear | FoldedLinear", inputs: th.Tensor) -> th.Tensor:
    """
    A float32 linear layer computed in another floating-point type: inputs, weight and bias rounded to ``dtype``. With
    ``torch.bfloat16`` the matrix product runs on the bfloat16 units of the hardware (AMX or AVX512-BF16 on recent x86
    CPUs, tensor cores on GPUs), which accumulate in float32.

    :param dtype: The type to compute in (``torch.float32``: the layer itself)
    :param layer: A float32 linear layer (or :class:`FoldedLinear`), whose parameters stay float32
    :param inputs: Its inputs, of any floating-point type
    :return: ``layer(inputs)`` with inputs, weight and bias rounded to ``dtype``, left in ``dtype``
    """
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return F.linear(inputs.to(dtype), layer.weight.to(dtype), bias)


class ResidualBlock(nn.Module):
    """
    SimBa's residual feed-forward block (Lee et al. 2024, "SimBa: Simplicity Bias for Scaling Up Parameters in Deep
    Reinforcement Learning", arXiv 2410.09754, Sec. 4): x + W₂·act(W₁·LayerNorm(x)), the inner layer ``expansion``
    times wider than x.

    :param width: Width of x
    :param activation_fn: The inner activation (SimBa: ReLU)
    :param expansion: Width of the inner layer over ``width``
    """

    def __init__(self, width: int, activation_fn: type[nn.Module], expansion: int = 4):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, expansion * width), activation_fn(), nn.Linear(expansion * width, width)
        )

    def forward(self, x: th.Tensor) -> th.Tensor:
        return x + self.mlp(x)

    def forward_in(self, dtype: th.dtype, x: th.Tensor) -> th.Tensor:
        """
        The block with its inner layer in ``dtype``: the normalised input rounded to ``dtype`` once, both matrix
        products and the activation between them in ``dtype`` (the inner activations are 4x wider than x, so
        rounding them back and forth would cost more than the products save), the sum with x in float32.

        :param dtype: The type to compute the inner layer in (``torch.float32``: the block itself)
        :param x: Float32 input
        :return: The block's float32 output
        """
        norm, first, activation, second = self.mlp
        assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear), "built by __init__ as LN, Linear, act, Linear"
        return x + linear_as(dtype, second, activation(linear_as(dtype, first, norm(x)))).float()


def sigmoid_tanh(inputs: th.Tensor) -> th.Tensor:
    """
    tanh(x) = 2·σ(2x) − 1, within a few float32 roundings of ``torch.tanh`` (about 2e-7). On an AMD EPYC CPU torch's
    tanh kernel took about three times as long as its sigmoid with the two scalings after it
    (``benchmarks/update_cost.reading.md``). :func:`modules_in` computes every tanh it meets with it; the target pass
    (:func:`sampled_pass`) first rewrites Acme's input block whole (:func:`tanh_blocks_as_sigmoid`), so there it is left
    for a tanh that no Linear layer follows. Where autograd needs the result, torch's own tanh (the in-place scalings
    would overwrite the sigmoid's saved output).

    :param inputs: Any floating-point tensor
    :return: tanh(inputs)
    """
    if inputs.requires_grad and th.is_grad_enabled():
        return th.tanh(inputs)
    return (inputs * 2).sigmoid_().mul_(2).sub_(1)


def linear_float32(layer: "nn.Linear | FoldedLinear", inputs: th.Tensor) -> th.Tensor:
    """
    :param layer: A float32 linear layer (or :class:`FoldedLinear`)
    :param inputs: Its float32 inputs
    :return: ``layer(inputs)``; without autograd, the product first and the bias added in place: torch's ``addmm``
        first copies the bias into every row of its output, a pass over the N·B rows of the target pass that the
        in-place addition does without (``benchmarks/update_cost.reading.md``)
    """
    if th.is_grad_enabled() and inputs.requires_grad:
        return layer(inputs)
    product = th.matmul(inputs, layer.weight.T)
    return product if layer.bias is None else product.add_(layer.bias)


class ScaledLayerNorm(NamedTuple):
    """A LayerNorm over the last ``len(normalized_shape)`` dimensions with the given affine map, without gradient."""

    normalized_shape: tuple[int, ...]
    weight: th.Tensor
    bias: th.Tensor
    eps: float

    def __call__(self, inputs: th.Tensor) -> th.Tensor:
        return F.layer_norm(inputs, self.normalized_shape, self.weight, self.bias, self.eps)


class InPlaceSigmoid(NamedTuple):
    """The logistic function, computed in place on a tensor nothing else reads (a fixed layer's fresh output)."""

    def __call__(self, inputs: th.Tensor) -> th.Tensor:
        return inputs.sigmoid_()


def tanh_blocks_as_sigmoid(layers: "Sequence[FixedLayer]") -> "list[FixedLayer]":
    """
    Acme's input block LayerNorm → tanh → Linear as LayerNorm·2 → σ → Linear', exactly: tanh(y) = 2σ(2y) − 1, the 2y
    from the LayerNorm's affine map doubled, and W·(2σ − 1) + b = (2W)·σ + (b − W·1) folded into the Linear after it.
    The block's three passes over the N·B rows of the target pass (tanh's own kernel, or the doubling and the two
    scalings around a sigmoid) become one in-place sigmoid. For passes without gradient; other layers are left as they
    are.

    :param layers: Layers in order (nested ``nn.Sequential`` containers opened, as :func:`flat_layers` gives them)
    :return: The same layers with each LayerNorm, Tanh, Linear (or :class:`FoldedLinear`) triple rewritten
    """
    layers = list(layers)
    rewritten: list[FixedLayer] = []
    index = 0
    while index < len(layers):
        block = layers[index : index + 3]
        if (
            len(block) == 3
            and isinstance(block[0], nn.LayerNorm)
            and isinstance(block[1], nn.Tanh)
            and isinstance(block[2], (nn.Linear, FoldedLinear))
        ):
            norm, linear = cast(nn.LayerNorm, block[0]), cast("nn.Linear | FoldedLinear", block[2])
            with th.no_grad():
                ones = th.ones(norm.normalized_shape, device=linear.weight.device)
                weight = 2 * (ones if norm.weight is None else norm.weight)
                bias = 2 * (th.zeros_like(ones) if norm.bias is None else norm.bias)
                folded_bias = -linear.weight.sum(dim=1) if linear.bias is None else linear.bias - linear.weight.sum(dim=1)
                rewritten += [
                    ScaledLayerNorm(tuple(norm.normalized_shape), weight, bias, norm.eps),
                    InPlaceSigmoid(),
                    FoldedLinear(2 * linear.weight, folded_bias),
                ]
            index += 3
        else:
            rewritten.append(layers[index])
            index += 1
    return rewritten


def flat_layers(modules: "Iterable[FixedLayer]") -> "list[FixedLayer]":
    """
    :param modules: Modules, some of them perhaps ``nn.Sequential`` containers
    :return: Their layers in order, those of nested containers in their place
    """
    return [layer for module in modules for layer in (flat_layers(module) if isinstance(module, nn.Sequential) else [module])]


def modules_in(dtype: th.dtype, modules: "Iterable[FixedLayer]", inputs: th.Tensor) -> th.Tensor:
    """
    Float32 layers applied in turn (nested ``nn.Sequential`` containers opened), their matrix products computed in
    ``dtype``: each ``nn.Linear`` (or :class:`FoldedLinear`) through :func:`linear_as`, SimBa's residual blocks through
    :meth:`ResidualBlock.forward_in`. An activation between two of these products, ReLU or ELU, stays in ``dtype``
    too: the next layer rounds its inputs to ``dtype`` anyway, so this is exact for ReLU and within a rounding of
    ``dtype`` for ELU, and it saves two conversions of 20·B rows. Anything else (normalisations, tanh), an activation
    of float32 inputs, and one that feeds no linear layer of ``modules``, runs in float32, so the result keeps
    float32's resolution.

    :param dtype: The type of the matrix products (``torch.float32``: the layers themselves)
    :param modules: The layers, whose parameters stay float32
    :param inputs: Their float32 inputs
    :return: The layers' float32 output
    """
    layers = flat_layers(modules)
    linear = (nn.Linear, FoldedLinear)
    for index, layer in enumerate(layers):
        feeds_linear = index + 1 < len(layers) and isinstance(layers[index + 1], linear)
        if isinstance(layer, linear):
            inputs = linear_float32(layer, inputs) if dtype == th.float32 else linear_as(dtype, layer, inputs)
        elif isinstance(layer, (nn.ReLU, nn.ELU)):
            inputs = layer(inputs if feeds_linear else inputs.float())
        elif isinstance(layer, ResidualBlock):
            inputs = layer.forward_in(dtype, inputs.float())
        elif isinstance(layer, nn.Tanh):
            inputs = sigmoid_tanh(inputs.float())
        else:
            inputs = layer(inputs.float())
    return inputs.float()


def residual_torso(network: nn.Module, activation_fn: type[nn.Module]) -> None:
    """
    Turn an MLP built by SB3's ``create_mlp`` with k hidden layers of one width h into SimBa's network (Lee et al.
    2024, Sec. 4): the first Linear embeds the input in h dimensions, k residual blocks (:class:`ResidualBlock`)
    follow, then a LayerNorm, then the MLP's output layer if it has one. Every path from input to output keeps a
    linear route, and the normalisation keeps the features' scale, which SimBa credits for training larger networks
    without overfitting.

    :param network: The MLP (an ``nn.Sequential`` with at least one hidden layer, all of one width), changed in place
    :param activation_fn: The blocks' inner activation
    """
    if not isinstance(network, nn.Sequential):
        raise TypeError(f"residual_torso needs an nn.Sequential MLP, got {type(network).__name__}")
    linears = [module for module in network if isinstance(module, nn.Linear)]
    output = [network[-1]] if len(linears) > 1 and network[-1] is linears[-1] else []
    hidden = linears[: len(linears) - len(output)]
    widths = {layer.out_features for layer in hidden}
    if not hidden or len(widths) != 1:
        raise ValueError(
            f"residual_torso needs hidden layers of one width, got widths {[layer.out_features for layer in hidden]}"
        )
    width = hidden[0].out_features
    layers = [hidden[0], *(ResidualBlock(width, activation_fn) for _ in hidden), nn.LayerNorm(width), *output]
    for index in reversed(range(len(network))):
        del network[index]
    for layer in layers:
        network.append(layer)


class SharedBatchRenorm(BatchRenorm1d):
    """
    sb3-contrib's ``BatchRenorm1d`` (Ioffe 2017, "Batch Renormalization", the layer of CrossQ's critic), whose
    normalisation of one batch can be applied to another: :meth:`batch_statistics` gives the mean and variance a
    training-mode forward normalises its batch with (the batch's own during the first ``warmup_steps`` calls, then the
    batch's renormalised towards the running ones by the clipped factors r and d), and :meth:`normalize` applies any
    such pair. In training mode ``forward`` is the two in turn, as sb3-contrib's layer computes it; in evaluation mode
    it normalises with the running statistics. In data-parallel training the batch's moments are those of every
    worker's batch together, as PyTorch's ``SyncBatchNorm`` takes them (:attr:`sum_over_workers`).
    """

    #: In data-parallel training (:class:`~sb3_mpo.distributed.DistributedMPO`), a differentiable sum of a tensor over
    #: the workers, whose backward pass sums the gradients over the workers in turn; ``None`` in a single process
    sum_over_workers: Callable[[th.Tensor], th.Tensor] | None = None

    def batch_moments(self, x: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """
        :param x: A batch, shape (B, num_features)
        :return: Its mean and unbiased variance, each (num_features,), over every worker's batch together in
            data-parallel training; they carry the batch's gradient
        """
        # two passes, where torch's var over the batch dimension took ten times as long on a CPU (and its backward twice)
        if self.sum_over_workers is None:
            mean = x.mean(dim=0)
            return mean, (x - mean).square().sum(dim=0) / (x.shape[0] - 1)
        sums = self.sum_over_workers(th.cat([x.sum(dim=0), x.new_full((1,), x.shape[0])]))
        mean, count = sums[:-1] / sums[-1], sums[-1]
        return mean, self.sum_over_workers((x - mean).square().sum(dim=0)) / (count - 1)

    def batch_statistics(self, x: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """
        The statistics a training-mode forward of ``x`` normalises with; like that forward, this updates the running
        statistics and counts one step.

        :param x: A batch, shape (B, num_features)
        :return: The mean and variance to normalise with, each (num_features,); they carry the batch's gradient
        """
        mean, var = self.batch_moments(x)  # the unbiased variance, as sb3-contrib's layer takes it
        ra_mean, ra_var = cast(th.Tensor, self.ra_mean), cast(th.Tensor, self.ra_var)
        normalising = (mean, var)
        if int(cast(th.Tensor, self.steps)) > self.warmup_steps:
            # y = r·(x − mean)/std + d = (x − m)/√v with m = mean − d·std/r and v = var/r², r and d held constant
            std, running_std = (var + self.eps).sqrt(), (ra_var + self.eps).sqrt()
            r = (std / running_std).detach().clamp(1 / self.rmax, self.rmax)
            d = ((mean - ra_mean) / running_std).detach().clamp(-self.dmax, self.dmax)
            # √var's gradient is infinite where a feature is constant over the batch (an action clipped at its bound, a
            # saturated unit), and d·∞ made the batch's gradient NaN (sb3-contrib's layer too): the clamp keeps the
            # value (√tiny ≈ 1e-19 for 0) and passes no gradient there, where x's own gradient of var is 0 anyway
            normalising = (mean - d * var.clamp_min(th.finfo(var.dtype).tiny).sqrt() / r, var / r**2)
        with th.no_grad():
            ra_mean.lerp_(mean, self.momentum)
            ra_var.lerp_(var, self.momentum)
            cast(th.Tensor, self.steps).add_(1)
        return normalising

    def normalize(self, x: th.Tensor, mean: th.Tensor, var: th.Tensor) -> th.Tensor:
        """
        :param x: A batch, shape (B, num_features)
        :param mean: The mean to normalise with, (num_features,)
        :param var: The variance to normalise with, (num_features,)
        :return: (x − mean)/√(var + eps), then the layer's affine map
        """
        normalized = (x - mean) / (var + self.eps).sqrt()
        return self.scale * normalized + self.bias if self.affine else normalized

    def affine_map(self, mean: th.Tensor, var: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """
        :param mean: The mean to normalise with, (num_features,)
        :param var: The variance to normalise with, (num_features,)
        :return: The per-feature scale and shift of :meth:`normalize` with these statistics, ``x·scale + shift``
        """
        scale = (var + self.eps).rsqrt()
        if self.affine:
            scale = self.scale * scale
            return scale, self.bias - scale * mean
        return scale, -scale * mean

    def forward(self, x: th.Tensor) -> th.Tensor:
        if self.training:
            return self.normalize(x, *self.batch_statistics(x))
        return self.normalize(x, cast(th.Tensor, self.ra_mean), cast(th.Tensor, self.ra_var))


def batch_renorm_torso(network: nn.Module, momentum: float, warmup_steps: int) -> None:
    """
    Give an MLP built by SB3's ``create_mlp`` CrossQ's normalisation (Bhatt et al. 2024, "CrossQ: Batch Normalization in
    Deep Reinforcement Learning for Greater Sample Efficiency and Simplicity", ICLR; sb3-contrib's CrossQ critic): a
    :class:`SharedBatchRenorm` before every Linear layer, the input layer's included.

    :param network: The MLP (an ``nn.Sequential``), changed in place
    :param momentum: Rate at which the running statistics follow the batches' (CrossQ: 0.01)
    :param warmup_steps: Training-mode calls that normalise with the batch's own statistics before the running ones
        renormalise them (CrossQ: 100,000)
    """
    if not isinstance(network, nn.Sequential):
        raise TypeError(f"batch_renorm_torso needs an nn.Sequential MLP, got {type(network).__name__}")
    layers = list(network)
    for index in reversed(range(len(network))):
        del network[index]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            network.append(SharedBatchRenorm(layer.in_features, momentum=momentum, warmup_steps=warmup_steps))
        network.append(layer)


class FixedAffine(NamedTuple):
    """A per-feature affine map x·scale + shift: a normalisation whose statistics are fixed."""

    scale: th.Tensor
    shift: th.Tensor

    def __call__(self, inputs: th.Tensor) -> th.Tensor:
        return th.addcmul(self.shift, inputs, self.scale)

    def folded_into(self, layer: nn.Linear) -> "FoldedLinear":
        """:return: The Linear layer applied after this map, as one affine layer (call it without gradient)"""
        bias = layer.weight @ self.shift if layer.bias is None else th.addmv(layer.bias, layer.weight, self.shift)
        return FoldedLinear(layer.weight * self.scale, bias)


class FoldedLinear(NamedTuple):
    """
    A Linear layer that takes in the fixed affine map x·c + d before it: W·(x·c + d) + b = (W·diag(c))·x + (W·d + b)
    (:meth:`FixedAffine.folded_into`). :func:`modules_in` computes it as it computes an ``nn.Linear``.
    """

    weight: th.Tensor
    bias: th.Tensor

    def __call__(self, inputs: th.Tensor) -> th.Tensor:
        return F.linear(inputs, self.weight, self.bias)


#: A layer as it acts on rows that a batch's fixed statistics normalise (see :func:`with_batch_statistics`), or as
#: :func:`tanh_blocks_as_sigmoid` rewrites it
FixedLayer = nn.Module | FixedAffine | FoldedLinear | ScaledLayerNorm | InPlaceSigmoid


def with_batch_statistics(modules: Iterable[nn.Module], graded: th.Tensor) -> tuple[th.Tensor, list[FixedLayer]]:
    """
    A training-mode forward of ``graded``, which keeps its gradient (through its statistics too) and moves each
    :class:`SharedBatchRenorm`'s running statistics once; and the same layers as they act on other rows normalised with
    the statistics of ``graded`` (:func:`folded_normalisations`), so those rows pay for no normalisation pass.

    :param modules: The layers (nested ``nn.Sequential`` containers opened), in training mode
    :param graded: The rows that train the network and set the statistics, (B, in_features)
    :return: Their outputs, (B, out_features), and the layers for other rows (their parameters without gradient)
    """
    layers, affine_maps = flat_layers(modules), []
    for layer in layers:
        if isinstance(layer, SharedBatchRenorm):
            mean, var = layer.batch_statistics(graded)
            graded = layer.normalize(graded, mean, var)
            with th.no_grad():
                affine_maps.append(FixedAffine(*layer.affine_map(mean, var)))
        else:
            graded = layer(graded)
    return graded, folded_normalisations(layers, affine_maps)


def with_running_statistics(modules: Iterable[nn.Module]) -> list[FixedLayer]:
    """
    :param modules: The layers (nested ``nn.Sequential`` containers opened)
    :return: The layers as they act in evaluation mode, each :class:`SharedBatchRenorm` normalising with its running
        statistics (:func:`folded_normalisations`); layers without one are returned as they are
    """
    layers = flat_layers(modules)
    with th.no_grad():
        affine_maps = [
            FixedAffine(*layer.affine_map(cast(th.Tensor, layer.ra_mean), cast(th.Tensor, layer.ra_var)))
            for layer in layers
            if isinstance(layer, SharedBatchRenorm)
        ]
    return folded_normalisations(layers, affine_maps)


def folded_normalisations(layers: Sequence[FixedLayer], affine_maps: Sequence[FixedAffine]) -> list[FixedLayer]:
    """
    Layers whose normalisations have fixed statistics: each :class:`SharedBatchRenorm` becomes its per-feature affine
    map (:class:`FixedAffine`), which the Linear layer right after it takes in (:class:`FoldedLinear`).

    :param layers: The layers, in order
    :param affine_maps: The affine map of each :class:`SharedBatchRenorm` among them, in order
    :return: The layers with the maps in place of the normalisations (their folded parameters without gradient)
    """
    maps = iter(affine_maps)
    fixed: list[FixedLayer] = []
    pending: FixedAffine | None = None  # a normalisation the next layer still owes
    for layer in layers:
        if isinstance(layer, SharedBatchRenorm):
            pending = next(maps)
            continue
        if pending is not None and isinstance(layer, nn.Linear):
            with th.no_grad():
                fixed.append(pending.folded_into(layer))
        else:
            fixed.extend([layer] if pending is None else [pending, layer])
        pending = None
    if pending is not None:
        fixed.append(pending)
    return fixed


def sampled_pass(
    layers: Sequence[FixedLayer], features: th.Tensor, actions: th.Tensor, hidden_dtype: th.dtype = th.float32
) -> th.Tensor:
    """
    An MLP over [features, action] for N actions per state. Its first layer's features half is computed once per state
    and broadcast over the samples: W·[f; a] + b = (W_f·f + b) + W_a·a, the product over the N·B rows with the
    per-state term added in place (a product that adds it as it writes, torch's ``baddbmm``, first copies it into
    every row). The layers after it run through :func:`modules_in` in ``hidden_dtype``, Acme's input block rewritten
    without gradient (:func:`tanh_blocks_as_sigmoid`); the first and the output layer in float32, so that the outputs
    keep float32's resolution.

    :param layers: The MLP's layers, the first and the last Linear (or :class:`FoldedLinear`)
    :param features: B states' features, (B, F)
    :param actions: N actions per state, (N, B, A)
    :param hidden_dtype: Floating-point type of the hidden layers' matrix products
    :return: The outputs, (N, B, out_features)
    """
    first = layers[0]
    assert isinstance(first, (nn.Linear, FoldedLinear)), "the first layer acts on [features, action]"
    n_features = features.shape[-1]
    per_state = F.linear(features, first.weight[:, :n_features], first.bias)
    hidden = th.matmul(actions, first.weight[:, n_features:].T).add_(per_state)
    if len(layers) == 1:  # no hidden layer: the first layer is the output layer
        return hidden
    later = flat_layers(layers[1:])
    if not th.is_grad_enabled():
        later = tanh_blocks_as_sigmoid(later)
    return later[-1](modules_in(hidden_dtype, later[:-1], hidden))
