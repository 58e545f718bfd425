"""
Checks of the hyperparameters rl_zoo3 is about to pass to MPO, so that a typo or a wrong type in a hyperparameter
file (or in ``--hyperparams``) stops the run before any environment is built, with a message naming the key.
"""

import collections.abc
import difflib
import inspect
import types
import typing
from collections.abc import Collection
from typing import Any, Literal, Union, get_args, get_origin

from sb3_mpo.mpo import MPO

#: Constructor arguments that rl_zoo3 sets from its command line, with the flag to use instead
SET_BY_RL_ZOO: dict[str, str] = {
    "env": "--env",
    "seed": "--seed",
    "verbose": "--verbose",
    "device": "--device",
    "tensorboard_log": "--tensorboard-log",
}
#: Policy arguments that MPO itself fills in
SET_BY_MPO: frozenset[str] = frozenset({"observation_space", "action_space", "lr_schedule"})


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


def matches_annotation(value: Any, annotation: Any) -> bool:
    """
    Whether ``value`` fits a type annotation, for the types that hyperparameters take (numbers, strings, booleans,
    ``None``, literals, classes, callables, lists, tuples and dicts). An int fits ``float``; a bool fits neither
    ``int`` nor ``float``. Annotations it cannot judge (type variables, strings) accept everything.

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
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if container is int:
        return isinstance(value, int) and not isinstance(value, bool)
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


def _describe(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(arg) for arg in get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _yaml_hint(value: Any) -> str:
    """A hint for numbers that YAML 1.1 reads as strings (``1e-3``), empty for any other value."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (YAML reads 1e-3 as a string: write !!float 1e-3 or 1.0e-3)"


def _check_arguments(
    arguments: dict[str, Any], parameters: dict[str, Any], owner: str, label: str, set_elsewhere: Collection[str]
) -> None:
    for key, value in arguments.items():
        name = label.format(key=key)
        if key not in parameters:
            close = difflib.get_close_matches(key, parameters, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            accepted = ", ".join(sorted(set(parameters).difference(set_elsewhere)))
            raise ValueError(f"Unknown hyperparameter {name} for {owner}.{hint} {owner} accepts: {accepted}")
        if not matches_annotation(value, parameters[key]):
            raise ValueError(
                f"Hyperparameter {name}={value!r} has type {type(value).__name__}, "
                f"expected {_describe(parameters[key])}{_yaml_hint(value)}"
            )


def check_mpo_hyperparams(hyperparams: dict[str, Any], algo_class: type[MPO] = MPO) -> None:
    """
    Check the hyperparameters rl_zoo3 will pass to MPO's constructor (after its own pre-processing: schedules built,
    ``policy_kwargs`` strings evaluated): every key must be a constructor argument, every value must fit its type,
    and ``policy_kwargs`` must fit the policy's constructor. MPO's constructor then checks the values themselves.

    :param hyperparams: The keyword arguments for MPO's constructor
    :param algo_class: The algorithm class (MPO or a subclass)
    :raises ValueError: naming the first key that is unknown, of the wrong type, or set elsewhere
    """
    for key in ("noise_type", "noise_std"):
        if key in hyperparams:
            raise ValueError(f"Hyperparameter {key!r} is not used by MPO, whose policy explores by itself: remove it")
    for key, flag in SET_BY_RL_ZOO.items():
        if key in hyperparams:
            raise ValueError(f"Hyperparameter {key!r} is set by rl_zoo3's {flag} flag: remove it from the hyperparameters")
    _check_arguments(hyperparams, constructor_parameters(algo_class), algo_class.__name__, "{key!r}", SET_BY_RL_ZOO)

    policy = hyperparams.get("policy", "MlpPolicy")
    policy_class = algo_class.policy_aliases.get(policy) if isinstance(policy, str) else policy
    policy_kwargs = hyperparams.get("policy_kwargs")
    if isinstance(policy_class, type) and isinstance(policy_kwargs, dict):
        for key in SET_BY_MPO.intersection(policy_kwargs):
            raise ValueError(f"Hyperparameter 'policy_kwargs' key {key!r} is set by {algo_class.__name__} itself: remove it")
        policy_parameters = constructor_parameters(policy_class)
        _check_arguments(policy_kwargs, policy_parameters, policy_class.__name__, "'policy_kwargs' key {key!r}", SET_BY_MPO)


def check_zoo_entry(hyperparams: dict[str, Any]) -> None:
    """
    Check the values that rl_zoo3 parses itself before it builds MPO's arguments, whose own errors would not name
    the key: ``n_timesteps``, a ``lin_<float>`` learning-rate schedule, and the Python expressions it evaluates.

    :param hyperparams: One entry of a hyperparameter file, merged with ``--hyperparams``
    :raises ValueError: naming the first key whose value rl_zoo3 could not parse
    """
    n_timesteps = hyperparams.get("n_timesteps")
    if not matches_annotation(n_timesteps, float):
        raise ValueError(f"Hyperparameter 'n_timesteps'={n_timesteps!r} must be a number (rl_zoo3 needs it even with -n)")
    learning_rate = hyperparams.get("learning_rate")
    if isinstance(learning_rate, str):
        schedule, _, initial_value = learning_rate.partition("_")
        try:
            float(initial_value)
        except ValueError:
            schedule = ""
        if schedule != "lin":
            raise ValueError(
                f"Hyperparameter 'learning_rate'={learning_rate!r} is neither a number nor a linear schedule "
                f"'lin_<float>'{_yaml_hint(learning_rate)}"
            )
    for key in ("policy_kwargs", "replay_buffer_class", "replay_buffer_kwargs", "monitor_kwargs", "normalize"):
        expression = hyperparams.get(key)
        if isinstance(expression, str):
            try:
                compile(expression, key, "eval")
            except SyntaxError as error:
                message = f"Hyperparameter {key!r}={expression!r} is not a valid Python expression: {error.msg}"
                raise ValueError(message) from error
