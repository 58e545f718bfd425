import inspect
from typing import Any

import optuna
from rl_zoo3.exp_manager import ExperimentManager

from sb3_mpo.common.hyperparams import SCHEDULED_RATES
from sb3_mpo.mpo import NonFiniteError
from sb3_mpo.zoo.checks import check_mpo_hyperparams, check_zoo_entry
from sb3_mpo.zoo.registration import ALGO_NAME, HYPERPARAMS_PATH


class MPOExperimentManager(ExperimentManager):
    """
    rl_zoo3's ``ExperimentManager`` with four hooks for ``--algo mpo``; every other algorithm runs unchanged.

    - The hyperparameters come from the file shipped with sb3-mpo (:data:`~sb3_mpo.zoo.HYPERPARAMS_PATH`)
      unless ``--conf-file`` names another one.
    - The hyperparameters are checked before any environment is built: an unknown key or a value of the wrong type
      stops the run with a message naming the key.
    - ``actor_learning_rate`` (:data:`~sb3_mpo.common.hyperparams.SCHEDULED_RATES`) may be RL Zoo's linear schedule
      ``lin_<float>``, as ``learning_rate`` may.
    - A hyperparameter-search trial that meets a NaN or infinite loss, observation or reward
      (:class:`~sb3_mpo.NonFiniteError`), or whose sampled settings MPO's constructor refuses beside the entry's fixed
      ones (e.g. a mixture critic where the entry sets ``value_normalization=True``), is pruned with a line that says
      why, as rl_zoo3 prunes trials that fail with ``ValueError`` while training, instead of stopping the whole search.

    Takes exactly the arguments of rl_zoo3's ``ExperimentManager``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        arguments = inspect.signature(ExperimentManager.__init__).bind(self, *args, **kwargs).arguments
        del arguments["self"]
        if arguments["algo"] == ALGO_NAME and arguments.get("config") is None:
            arguments["config"] = str(HYPERPARAMS_PATH)
            # Record in args.yml where the hyperparameters came from
            if getattr(arguments["args"], "conf_file", "") is None:
                arguments["args"].conf_file = arguments["config"]
        super().__init__(**arguments)

    @staticmethod
    def _preprocess_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
        hyperparams = ExperimentManager._preprocess_schedules(hyperparams)
        for key in SCHEDULED_RATES:  # rl_zoo3 reads 'lin_<float>' for learning_rate alone: the others as it reads that
            if isinstance(hyperparams.get(key), str):
                hyperparams[key] = ExperimentManager._preprocess_schedules({"learning_rate": hyperparams[key]})[
                    "learning_rate"
                ]
        return hyperparams

    def _preprocess_hyperparams(self, hyperparams: dict[str, Any]) -> tuple[dict[str, Any], Any, Any, Any]:
        if self.algo == ALGO_NAME:
            check_zoo_entry(hyperparams)
        processed, env_wrapper, callbacks, vec_env_wrapper = super()._preprocess_hyperparams(hyperparams)
        if self.algo == ALGO_NAME:
            check_mpo_hyperparams(processed)
        return processed, env_wrapper, callbacks, vec_env_wrapper

    def objective(self, trial: optuna.Trial) -> float:
        if self.algo != ALGO_NAME:  # every other algorithm's trials run as rl_zoo3's do
            return super().objective(trial)
        try:
            return super().objective(trial)
        except NonFiniteError as error:
            print(f"Trial {trial.number} met a non-finite value and is pruned: {error}")
            raise optuna.TrialPruned(str(error)) from error
        except ValueError as error:  # rl_zoo3 prunes those raised while training; these come from building the model
            print(f"Trial {trial.number}'s settings are refused and it is pruned: {error}")
            raise optuna.TrialPruned(str(error)) from error
