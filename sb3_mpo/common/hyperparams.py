"""The tuned MPO hyperparameters shipped with the package (RL Zoo format), for use outside RL Zoo."""

import ast
import contextlib
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml
from stable_baselines3.common.utils import LinearSchedule
from torch import nn

HYPERPARAMS_PATH = Path(__file__).parent.parent / "hyperparams" / "mpo.yml"
# Keys of an RL Zoo entry that configure the experiment rather than the algorithm's constructor
ZOO_ONLY_KEYS = (
    "n_timesteps",
    "policy",
    "normalize",
    "n_envs",
    "env_wrapper",
    "callback",
    "frame_stack",
    "vec_env_wrapper",
    "env_kwargs",
    "monitor_kwargs",
)


#: An entry's settings of what RL Zoo builds around the environment (wrappers, stacked frames, normalisation, several
#: environments, callbacks, the environment's own arguments)
ENVIRONMENT_KEYS = ("env_wrapper", "frame_stack", "normalize", "n_envs", "vec_env_wrapper", "callback", "env_kwargs")


def environment_settings(entry: dict[str, Any]) -> dict[str, Any]:
    """
    :param entry: An entry of an RL Zoo hyperparameter file
    :return: Its :data:`ENVIRONMENT_KEYS` that make RL Zoo build something around the environment, which a plain
        environment does not have (unset, false, empty and ``n_envs: 1`` build nothing)
    """
    return {
        key: value
        for key, value in entry.items()
        if key in ENVIRONMENT_KEYS
        and not (value is None or value is False or (key == "n_envs" and value == 1) or (key == "env_kwargs" and not value))
    }


def _policy_kwargs_value(node: ast.expr) -> Any:
    """
    A literal value, a torch layer class written ``nn.Name`` (as RL Zoo writes ``activation_fn=nn.ELU``), or a nested
    ``dict(...)`` of those (as in ``optimizer_kwargs=dict(betas=(0.5, 0.999))``).
    """
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "nn":
        layer = getattr(nn, node.attr, None)
        if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
            raise ValueError(f"nn.{node.attr} is not a torch.nn layer")
        return layer
    if isinstance(node, ast.Call):
        return _keyword_dict(node)
    return ast.literal_eval(node)


def _keyword_dict(node: ast.expr) -> dict[str, Any]:
    """The keyword arguments of a ``dict(key=value, ...)`` call, each value read by :func:`_policy_kwargs_value`."""
    refusal = ValueError(f"{ast.unparse(node)} is not a dict(key=value, ...) call")
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args):
        raise refusal
    items = {}
    for keyword in node.keywords:
        if keyword.arg is None:  # dict(**other)
            raise refusal
        items[keyword.arg] = _policy_kwargs_value(keyword.value)
    return items


def parse_policy_kwargs(text: str) -> dict[str, Any]:
    """
    Read RL Zoo's ``"dict(net_arch=[400, 300], activation_fn=nn.ELU)"`` strings without ``eval()``: only literal
    keyword values, ``torch.nn`` layer classes and nested ``dict(...)`` calls of those are accepted.

    :param text: The string from a hyperparameter file
    :return: The keyword arguments
    """
    try:
        return _keyword_dict(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError) as error:
        raise ValueError(
            f"policy_kwargs={text!r} is not supported here: {error} (expected a string like "
            "'dict(net_arch=[64, 64], activation_fn=nn.ELU, optimizer_kwargs=dict(betas=(0.5, 0.999)))')"
        ) from error


#: The learning rates an entry may give as RL Zoo's linear schedule ``lin_<float>``: rl_zoo3 reads ``learning_rate``'s,
#: sb3-mpo the actor's own rate the same way
SCHEDULED_RATES = ("learning_rate", "actor_learning_rate")


def zoo_entry_to_kwargs(entry: dict[str, Any]) -> dict[str, Any]:
    """
    Constructor keyword arguments from one RL Zoo entry, read as RL Zoo reads them: experiment-level keys are dropped,
    ``policy_kwargs`` strings are parsed, a ``train_freq`` list (YAML has no tuples) becomes a tuple, and a learning
    rate ``lin_<float>`` (:data:`SCHEDULED_RATES`) becomes RL Zoo's linear schedule from that value down to 0 over the
    training.

    :param entry: An entry of an RL Zoo hyperparameter file
    :return: Keyword arguments for the algorithm's constructor
    """
    kwargs = {key: value for key, value in entry.items() if key not in ZOO_ONLY_KEYS}
    if isinstance(kwargs.get("policy_kwargs"), str):
        kwargs["policy_kwargs"] = parse_policy_kwargs(kwargs["policy_kwargs"])
    if isinstance(kwargs.get("train_freq"), list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    for key in SCHEDULED_RATES:
        rate = kwargs.get(key)
        if isinstance(rate, str) and rate.startswith("lin_"):
            try:
                kwargs[key] = LinearSchedule(float(rate.removeprefix("lin_")), 0.0, 1.0)
            except ValueError as error:
                raise ValueError(f"{key}={rate!r} is not a linear schedule 'lin_<float>'") from error
    return kwargs


def is_atari(env_id: str) -> bool:
    """
    Whether gymnasium builds ``env_id`` with ALE's ``AtariEnv`` (importing ``ale_py``, where installed, registers the
    games): the test by which rl_zoo3 gives an Atari game without an entry of its own the file's ``atari`` entry.

    :param env_id: Gymnasium environment id
    """
    with contextlib.suppress(ImportError):
        import ale_py  # noqa: F401
    try:
        entry_point = gym.spec(env_id).entry_point
    except gym.error.Error:
        return False
    return "AtariEnv" in str(entry_point)


def load_entry(env_id: str, path: Path = HYPERPARAMS_PATH) -> dict[str, Any]:
    """
    The entry of an RL Zoo file that rl_zoo3 would train ``env_id`` with, merged with its anchors: its own, else the
    file's ``atari`` entry for an Atari game, else its ``default`` block.

    :param env_id: Gymnasium environment id
    :param path: Hyperparameter file in RL Zoo's format
    :return: The entry as written, experiment-level keys (``n_timesteps``, ``policy``, ...) included
    """
    with open(path) as file:
        entries = yaml.safe_load(file)
    if env_id in entries:
        name = env_id
    elif "atari" in entries and is_atari(env_id):
        name = "atari"
    elif "default" in entries:
        name = "default"
    else:
        raise ValueError(f"env_id={env_id!r} has no entry in {path}, which has no `default` block either")
    return dict(entries[name])


def load_hyperparams(env_id: str, path: Path = HYPERPARAMS_PATH) -> dict[str, Any]:
    """
    MPO's tuned constructor arguments for ``env_id``, from the shipped RL Zoo file (when the environment has no entry,
    the file's ``atari`` entry for an Atari game and its ``default`` block otherwise, as rl_zoo3 chooses): the
    settings RL Zoo's ``train`` uses, for a script of your own. The MuJoCo entries share
    one block, so ``load_hyperparams("HalfCheetah-v5")`` is also the measured starting point for another MuJoCo task.

    .. code-block:: python

        model = MPO("MlpPolicy", "HalfCheetah-v5", **load_hyperparams("HalfCheetah-v5"))

    :param env_id: Gymnasium environment id
    :param path: Hyperparameter file in RL Zoo's format
    :return: Keyword arguments for :class:`~sb3_mpo.MPO` (the entry's experiment-level keys, such as ``n_timesteps``,
        ``policy``, ``normalize`` and Atari's ``env_wrapper`` and ``frame_stack``, are left out: they configure RL Zoo's
        experiment, not the algorithm)
    """
    return zoo_entry_to_kwargs(load_entry(env_id, path))
