try:
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
    from rl_zoo3.utils import ALGOS
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError('sb3_mpo.zoo needs RL Zoo and Optuna: pip install "sb3-mpo[zoo]"') from error

from sb3_mpo.common.hyperparams import HYPERPARAMS_PATH
from sb3_mpo.mpo import MPO
from sb3_mpo.zoo.hyperparams_opt import convert_mpo_params, sample_mpo_params

__all__ = ["ALGO_NAME", "HYPERPARAMS_PATH", "register"]

#: Name of MPO on rl_zoo3's command line (``--algo mpo``) and in its log folders (``logs/mpo/...``)
ALGO_NAME = "mpo"


def register() -> None:
    """
    Add MPO to rl_zoo3's registries: the algorithms (``rl_zoo3.ALGOS``, read by train, enjoy and record_video),
    and the Optuna sampler and converter of its hyperparameter search. Calling it again changes nothing.
    """
    ALGOS[ALGO_NAME] = MPO
    HYPERPARAMS_SAMPLER[ALGO_NAME] = sample_mpo_params
    HYPERPARAMS_CONVERTER[ALGO_NAME] = convert_mpo_params
