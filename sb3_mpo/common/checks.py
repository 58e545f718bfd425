"""
Checks of the values MPO is given, shared by its constructor and by the RL Zoo's check of a hyperparameter file:
argument types and ranges (:func:`check_arguments`), ``policy_kwargs`` (:func:`check_policy_kwargs`), replay
buffers about to be loaded (:func:`replay_buffer_mismatch`) and transitions about to be stored
(:func:`non_finite_transition`). Every argument error is a ``ValueError`` that names the parameter, its value and
what is accepted.
"""

import argparse
import collections.abc
import difflib
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin

import numpy as np
from stable_baselines3.common.buffers import NStepReplayBuffer

from sb3_mpo.mpo.losses import MULTIPLIER_FLOOR

#: Policy arguments that MPO itself fills in
SET_BY_MPO: frozenset[str] = frozenset({"observation_space", "action_space", "lr_schedule"})
#: Optimiser arguments that the policy passes itself, and where from
SET_FOR_OPTIMIZER: dict[str, str] = {"params": "by the policy (its parameters)", "lr": "by MPO from learning_rate"}
#: The same for the actor's optimiser alone
SET_FOR_ACTOR_OPTIMIZER: dict[str, str] = {**SET_FOR_OPTIMIZER, "lr": "by MPO from actor_learning_rate (or learning_rate)"}
#: Features extractor arguments that SB3 passes itself, and where from
SET_FOR_EXTRACTOR: dict[str, str] = {"observation_space": "by SB3 from the environment"}
#: Replay buffer arguments that SB3 passes itself, and where from
SET_FOR_REPLAY_BUFFER: dict[str, str] = {
    "buffer_size": "by SB3 from buffer_size",
    "observation_space": "by SB3 from the environment",
    "action_space": "by SB3 from the environment",
    "device": "by SB3 from device",
    "n_envs": "by SB3 from the environment",
    "optimize_memory_usage": "by SB3 from optimize_memory_usage",
    "env": "by SB3 from the environment",
}
#: Buffer attributes that decide what a sample holds: the spaces its observations and actions come from, segment
#: length (Retrace), n-step horizon and its discount, whether a time-limit truncation keeps its bootstrap, and the
#: environments whose streams the buffer's columns hold
REPLAY_SETTINGS: tuple[str, ...] = (
    "observation_space",
    "action_space",
    "segment_length",
    "n_steps",
    "gamma",
    "handle_timeout_termination",
    "n_envs",
)

#: One array per quantity, or a dict of arrays for Dict observations
NumpyValues = np.ndarray | dict[str, np.ndarray]


def is_integer(value: Any) -> bool:
    """
    :param value: Any value
    :return: Whether it is an integer (Python or NumPy), booleans excluded
    """
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """
    :param value: Any value
    :return: Whether it is a real number (Python or NumPy, integer or float, finite or not), booleans excluded
    """
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """
    :param value: Any value
    :return: Whether it is a real number that is neither NaN nor infinite
    """
    return is_number(value) and math.isfinite(value)


class Requirement(NamedTuple):
    """What an argument accepts: a test of its value and the words that say it in an error message."""

    accepts: Callable[[Any], bool]
    description: str


def integer_at_least(minimum: int) -> Requirement:
    """
    :param minimum: The smallest accepted value
    :return: The requirement of an integer >= ``minimum``
    """
    names = {0: "a non-negative integer", 1: "a positive integer"}
    return Requirement(lambda value: is_integer(value) and value >= minimum, names.get(minimum, f"an integer >= {minimum}"))


def fraction(include_zero: bool) -> Requirement:
    """
    :param include_zero: Whether 0 is accepted
    :return: The requirement of a number in [0, 1] or (0, 1]
    """
    return Requirement(
        lambda value: is_finite_number(value) and (value >= 0 if include_zero else value > 0) and value <= 1,
        f"a float in {'[' if include_zero else '('}0, 1]",
    )


def optional(requirement: Requirement) -> Requirement:
    """
    :param requirement: What a value other than None must fulfil
    :return: The same requirement, with None accepted too
    """
    return Requirement(lambda value: value is None or requirement.accepts(value), f"{requirement.description} or None")


#: The most common requirements: counts and sizes, and bounds and learning rates
POSITIVE_INTEGER = integer_at_least(1)
POSITIVE_FLOAT = Requirement(lambda value: is_finite_number(value) and value > 0, "a finite positive float")
#: An initial temperature or Lagrange multiplier, which lies above the multipliers' floor
INITIAL_MULTIPLIER = Requirement(
    lambda value: is_finite_number(value) and value > MULTIPLIER_FLOOR,
    f"a finite float > {MULTIPLIER_FLOOR} (the multipliers' floor)",
)


def _is_learning_rate(value: Any) -> bool:
    """
    Whether a learning rate is a finite positive Python number (SB3 takes no NumPy float32), or a schedule whose value
    is a finite positive number at progress 1 (the start) and a finite non-negative one at progress 0 (the end: a
    schedule that decays to 0 is fine, one that turns negative would train by gradient ascent, which Adam allows).
    """
    if callable(value):
        start, end = value(1.0), value(0.0)
        return is_finite_number(start) and start > 0 and is_finite_number(end) and end >= 0
    return isinstance(value, (int, float)) and is_finite_number(value) and value > 0


def _is_train_freq(value: Any) -> bool:
    """Whether ``train_freq`` is a positive Python integer (SB3 takes no NumPy one), or a tuple of one and its unit."""
    if isinstance(value, tuple) and len(value) == 2:
        value, unit = value
        if unit not in ("step", "episode"):
            return False
    return isinstance(value, int) and POSITIVE_INTEGER.accepts(value)


def _is_layer_list(value: Any) -> bool:
    """Whether a value is a list of hidden-layer sizes (positive integers; empty for no hidden layer)."""
    return isinstance(value, list) and all(is_integer(size) and size >= 1 for size in value)


def _is_net_arch(value: Any) -> bool:
    """Whether ``net_arch`` is None, one list of layer sizes, or a dict of two with keys ``pi`` and ``qf``."""
    if isinstance(value, dict):
        return set(value) == {"pi", "qf"} and all(_is_layer_list(layers) for layers in value.values())
    return value is None or _is_layer_list(value)


#: A learning rate, constant or scheduled
LEARNING_RATE = Requirement(
    _is_learning_rate,
    "a finite positive Python float or a schedule whose value is one at progress 1 and a finite float >= 0 at progress 0",
)
#: What MPO's constructor arguments accept beyond their annotations; the others are checked against their annotation
MPO_ARGUMENTS: dict[str, Requirement] = {
    "learning_rate": LEARNING_RATE,
    "actor_learning_rate": optional(LEARNING_RATE),
    "buffer_size": POSITIVE_INTEGER,
    "learning_starts": integer_at_least(0),
    "batch_size": POSITIVE_INTEGER,
    "tau": fraction(include_zero=False),
    "gamma": fraction(include_zero=True),
    "train_freq": Requirement(
        _is_train_freq, "a positive Python integer or a tuple (positive Python integer, 'step' or 'episode')"
    ),
    "gradient_steps": Requirement(
        lambda value: is_integer(value) and value >= -1, "a non-negative integer, or -1 for as many as env steps"
    ),
    "n_steps": POSITIVE_INTEGER,
    "segment_length": POSITIVE_INTEGER,
    "retrace_lambda": fraction(include_zero=True),
    "n_action_samples": integer_at_least(2),
    "mixture_return_samples": POSITIVE_INTEGER,
    "mixture_quadrature_nodes": optional(POSITIVE_INTEGER),
    "parametric_samples": optional(POSITIVE_INTEGER),
    "epsilon": POSITIVE_FLOAT,
    "epsilon_mean": POSITIVE_FLOAT,
    "epsilon_std": POSITIVE_FLOAT,
    "epsilon_policy": POSITIVE_FLOAT,
    "epsilon_penalty": optional(POSITIVE_FLOAT),
    "init_temperature": INITIAL_MULTIPLIER,
    "init_alpha_mean": INITIAL_MULTIPLIER,
    "init_alpha_std": INITIAL_MULTIPLIER,
    "dual_learning_rate": POSITIVE_FLOAT,
    "max_grad_norm": optional(POSITIVE_FLOAT),
    "target_update_interval": POSITIVE_INTEGER,
    "replay_fraction": fraction(include_zero=False),
    "stats_window_size": POSITIVE_INTEGER,
    # Python's random.seed, which SB3 calls with it, takes no NumPy integer
    "seed": Requirement(lambda value: value is None or type(value) is int, "None or a Python integer"),
}
#: What the policy's arguments (``policy_kwargs``) accept beyond their annotations
POLICY_ARGUMENTS: dict[str, Requirement] = {
    "net_arch": Requirement(
        _is_net_arch,
        "None, a list of positive integers (the hidden layers' sizes) or a dict of two such lists with keys 'pi' and 'qf'",
    ),
    "init_std": POSITIVE_FLOAT,
    "min_std": POSITIVE_FLOAT,
    "critic_mixture_init_scale": optional(POSITIVE_FLOAT),
    "batch_norm_momentum": fraction(include_zero=False),
    "renorm_warmup_steps": integer_at_least(0),
}


@functools.cache
def constructor_parameters(cls: type) -> dict[str, Any]:
    """
    Named parameters of ``cls.__init__`` and their type annotations, following ``**kwargs`` up the class hierarchy
    (e.g. from ``CnnPolicy`` to ``MPOPolicy``). Private parameters (``_init_setup_model``) are left out.

    :param cls: The class whose constructor is inspected
    :return: Parameter name -> annotation (``inspect.Parameter.empty`` when there is none)
    """
    parameters: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        signature = inspect.signature(klass.__init__)  # type: ignore[misc]
        try:
            hints = typing.get_type_hints(klass.__init__)  # type: ignore[misc]
        except Exception:  # unresolvable forward references: fall back on the raw annotations
            hints = {}
        for name, parameter in signature.parameters.items():
            if name == "self" or name.startswith("_") or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            parameters.setdefault(name, hints.get(name, parameter.annotation))
        if not any(parameter.kind is parameter.VAR_KEYWORD for parameter in signature.parameters.values()):
            break
    return parameters


def constructor_default(cls: type, name: str) -> Any:
    """
    :param cls: A class
    :param name: A parameter of its constructor, or of one its ``**kwargs`` reach (see :func:`constructor_parameters`)
    :return: The parameter's default value, or ``inspect.Parameter.empty`` when it has none or is not there
    """
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            parameter = inspect.signature(klass.__init__).parameters.get(name)  # type: ignore[misc]
            if parameter is not None:
                return parameter.default
    return inspect.Parameter.empty


def matches_annotation(value: Any, annotation: Any) -> bool:
    """
    Whether ``value`` fits a type annotation, for the types that hyperparameters take (numbers, strings, booleans,
    ``None``, literals, classes, callables, lists, tuples and dicts). An integer fits ``float``; a bool fits neither
    ``int`` nor ``float``; NumPy numbers count as numbers. Annotations it cannot judge (type variables, strings)
    accept everything.

    :param value: A hyperparameter value
    :param annotation: The annotation of the constructor parameter
    :return: ``False`` only when the value certainly does not fit
    """
    if annotation in (Any, inspect.Parameter.empty):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(matches_annotation(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin is type or annotation is type:
        return isinstance(value, type) and (not args or not isinstance(args[0], type) or issubclass(value, args[0]))
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        return callable(value)
    container = origin if origin is not None else annotation
    if not isinstance(container, type):
        return True
    if container is float:
        return is_number(value)
    if container is int:
        return is_integer(value)
    return isinstance(value, container) and _matches_items(value, container, args)


def _matches_items(value: Any, container: type, args: tuple[Any, ...]) -> bool:
    """Whether the items of a list, tuple or dict fit the annotation's arguments (e.g. ``int`` in ``list[int]``)."""
    if container is list and args:
        return all(matches_annotation(item, args[0]) for item in value)
    if container is tuple and args and Ellipsis not in args:
        return len(value) == len(args) and all(matches_annotation(item, arg) for item, arg in zip(value, args, strict=True))
    if container is dict and len(args) == 2:
        return all(matches_annotation(key, args[0]) and matches_annotation(item, args[1]) for key, item in value.items())
    return True


def describe_annotation(annotation: Any) -> str:
    """
    :param annotation: A type annotation
    :return: The values it accepts, in words (``one of 'clip', 'tanh'``) or as the type's name
    """
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(arg) for arg in get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def yaml_hint(value: Any) -> str:
    """
    :param value: An argument's value
    :return: A hint for numbers that YAML 1.1 reads as strings (``1e-3``), empty for any other value
    """
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (YAML reads 1e-3 as a string: write !!float 1e-3 or 1.0e-3)"


def check_known_keys(
    arguments: Mapping[str, Any], parameters: Collection[str], owner: str, label: str, set_elsewhere: Collection[str] = ()
) -> None:
    """
    Refuse a key that is not a constructor parameter, suggesting the closest one.

    :param arguments: The keyword arguments
    :param parameters: The names the constructor accepts
    :param owner: The class they are for, as the message names it
    :param label: How the message names a key, e.g. ``"{key!r}"`` or ``"'policy_kwargs' key {key!r}"``
    :param set_elsewhere: Parameters not to list among the accepted ones (they are set by someone else)
    :raises ValueError: naming the first unknown key
    """
    for key in arguments:
        if key not in parameters:
            close = difflib.get_close_matches(key, parameters, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            accepted = ", ".join(sorted(set(parameters).difference(set_elsewhere)))
            takes = f"accepts: {accepted}" if accepted else "takes no keyword of its own"
            raise ValueError(f"Unknown hyperparameter {label.format(key=key)} for {owner}.{hint} {owner} {takes}")


#: Classes whose constructor passes its ``**kwargs`` on to its parent's and uses them for nothing else (SB3's n-step
#: buffer): their keys are checked against their own and their parents' parameters (:func:`constructor_parameters`)
FORWARDING_CLASSES: tuple[type, ...] = (NStepReplayBuffer,)


def check_class_kwargs(kwargs: Mapping[str, Any], cls: type, set_elsewhere: Mapping[str, str], label: str) -> None:
    """
    Refuse keyword arguments meant for another class's constructor that it receives from elsewhere, or does not take,
    before it is called: Python's ``TypeError`` would name neither where the argument comes from nor what is accepted.
    A class whose own constructor takes ``**kwargs`` may use them for anything (SMM's buffer builds its density model
    with them): only the arguments passed otherwise are refused there.

    :param kwargs: The keyword arguments, e.g. ``policy_kwargs["optimizer_kwargs"]``
    :param cls: The class they go to
    :param set_elsewhere: Its arguments passed otherwise -> where from, in words (``"by MPO from learning_rate"``)
    :param label: How the message names a key, e.g. ``"'replay_buffer_kwargs' key {key!r}"``
    :raises ValueError: naming the first such key
    """
    for key in kwargs:
        if key in set_elsewhere:
            raise ValueError(f"Hyperparameter {label.format(key=key)} is set {set_elsewhere[key]}: remove it")
    constructor = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    if cls in FORWARDING_CLASSES or not any(parameter.kind is parameter.VAR_KEYWORD for parameter in constructor):
        check_known_keys(kwargs, constructor_parameters(cls), cls.__name__, label, set_elsewhere)


def tuples_from_json(arguments: Mapping[str, Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """
    Arguments as they were given before a JSON round trip, as SB3's ``save`` makes of a model's settings (JSON has no
    tuples): a list that its annotation refuses (:func:`matches_annotation`) and takes as a tuple becomes that tuple.

    :param arguments: Argument name -> value, as read back
    :param parameters: Argument name -> annotation (see :func:`constructor_parameters`)
    :return: The arguments, with those lists turned back into tuples
    """

    def as_given(key: str, value: Any) -> Any:
        if not isinstance(value, list) or key not in parameters or matches_annotation(value, parameters[key]):
            return value
        return tuple(value) if matches_annotation(tuple(value), parameters[key]) else value

    return {key: as_given(key, value) for key, value in arguments.items()}


def check_arguments(
    owner: str,
    arguments: Mapping[str, Any],
    parameters: Mapping[str, Any],
    requirements: Mapping[str, Requirement] = MPO_ARGUMENTS,
    label: str = "{key}",
) -> None:
    """
    Check the value of each argument: against its requirement when there is one (type, finiteness, range), else
    against its annotation. Arguments that are not among ``parameters`` are left to :func:`check_known_keys`.

    :param owner: The algorithm, as the message names it
    :param arguments: Argument name -> value
    :param parameters: Argument name -> annotation (see :func:`constructor_parameters`)
    :param requirements: Argument name -> what it accepts
    :param label: How the message names an argument, e.g. ``"{key}"`` or ``"policy_kwargs[{key!r}]"``
    :raises ValueError: ``"<owner>: <name>=<value> is invalid, expected <what is accepted>"`` for the first bad value
    """
    for key, value in arguments.items():
        if key in requirements:
            valid, accepted = requirements[key].accepts(value), requirements[key].description
        elif key in parameters:
            valid, accepted = matches_annotation(value, parameters[key]), describe_annotation(parameters[key])
        else:
            continue
        if not valid:
            raise ValueError(f"{owner}: {label.format(key=key)}={value!r} is invalid, expected {accepted}{yaml_hint(value)}")


def check_policy_kwargs(owner: str, policy_class: type, policy_kwargs: Mapping[str, Any]) -> None:
    """
    Check ``policy_kwargs`` against the policy's constructor: no argument that the algorithm fills in, no unknown
    key, every value of the right type and range (``net_arch``, ``init_std``, ``min_std``, ...), the keys of
    ``features_extractor_kwargs`` against the features extractor's constructor, and those of ``optimizer_kwargs`` and
    ``actor_optimizer_kwargs`` against the optimiser's.

    :param owner: The algorithm, as the message names it
    :param policy_class: The policy class the keyword arguments are for
    :param policy_kwargs: The keyword arguments
    :raises ValueError: naming the first key that is set elsewhere, unknown, or whose value is invalid
    """
    for key in SET_BY_MPO.intersection(policy_kwargs):
        raise ValueError(f"Hyperparameter 'policy_kwargs' key {key!r} is set by {owner} itself: remove it")
    parameters = constructor_parameters(policy_class)
    check_known_keys(policy_kwargs, parameters, policy_class.__name__, "'policy_kwargs' key {key!r}", SET_BY_MPO)
    check_arguments(owner, policy_kwargs, parameters, POLICY_ARGUMENTS, "policy_kwargs[{key!r}]")
    extractor_class = policy_kwargs.get(
        "features_extractor_class", constructor_default(policy_class, "features_extractor_class")
    )
    if isinstance(extractor_class, type):  # a user's policy may take none
        label = "'policy_kwargs' 'features_extractor_kwargs' key {key!r}"
        check_class_kwargs(policy_kwargs.get("features_extractor_kwargs") or {}, extractor_class, SET_FOR_EXTRACTOR, label)
    optimizer_class = policy_kwargs.get("optimizer_class", constructor_default(policy_class, "optimizer_class"))
    if optimizer_class is inspect.Parameter.empty or not isinstance(optimizer_class, type):  # a user's policy may take none
        return
    for name, set_elsewhere in (("optimizer_kwargs", SET_FOR_OPTIMIZER), ("actor_optimizer_kwargs", SET_FOR_ACTOR_OPTIMIZER)):
        label = f"'policy_kwargs' {name!r} key {{key!r}}"
        check_class_kwargs(policy_kwargs.get(name) or {}, optimizer_class, set_elsewhere, label)


def replay_buffer_mismatch(expected: Any, loaded: Any) -> str | None:
    """
    Tell why a loaded replay buffer would not be sampled like the model's own: another class (e.g. transitions where
    Retrace needs segments) or another setting among :data:`REPLAY_SETTINGS`.

    :param expected: The replay buffer the model built for its settings
    :param loaded: The replay buffer about to replace it
    :return: What differs, in words, or None when nothing does
    """
    if type(loaded) is not type(expected):
        return f"it is a {type(loaded).__name__}, where this model samples a {type(expected).__name__}"
    for name in REPLAY_SETTINGS:
        if hasattr(expected, name) and getattr(loaded, name, None) != getattr(expected, name):
            return f"it has {name}={getattr(loaded, name, None)!r}, where this model has {name}={getattr(expected, name)!r}"
    return None


def all_finite(values: NumpyValues) -> bool:
    """
    :param values: An array, or a dict of arrays (Dict observations)
    :return: Whether no value is NaN or infinite (integer and boolean arrays always are finite)
    """
    if isinstance(values, dict):
        return all(all_finite(array) for array in values.values())
    array = np.asarray(values)
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


def _first_non_finite_env(values: NumpyValues) -> int:
    """The first environment (index on the first axis) whose values hold a NaN or an infinity."""
    if isinstance(values, dict):
        return min(_first_non_finite_env(array) for array in values.values() if not all_finite(array))
    array = np.asarray(values)
    return int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0])


def non_finite_transition(
    quantities: Mapping[str, NumpyValues], terminal_observations: Mapping[int, NumpyValues]
) -> tuple[str, int] | None:
    """
    Find a NaN or an infinity in one step of every environment, with one ``np.isfinite`` per array when all are finite.

    :param quantities: Name -> values of the step, one row per environment (observations, actions, rewards)
    :param terminal_observations: Environment index -> terminal observation, for the environments whose episode ended
    :return: The name of the first non-finite quantity and the environment it came from, or None when all are finite
    """
    for name, values in quantities.items():
        if not all_finite(values):
            return name, _first_non_finite_env(values)
    for env_index, observation in terminal_observations.items():
        if not all_finite(observation):
            return "terminal observation", env_index
    return None


def positive_int_argument(text: str) -> int:
    """
    An argparse type for counts (steps, episodes, workers): argparse names the option in its error.

    :param text: The command line's value
    :return: The whole number it spells, at least 1
    :raises argparse.ArgumentTypeError: where it spells none
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
