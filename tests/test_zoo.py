"""
RL Zoo integration: ``python -m sb3_mpo.zoo`` runs rl_zoo3's entry points with MPO registered. Like rl_zoo3's own
tests, each test runs a command on a short budget and checks what it leaves in the log folder; the commands run
in-process (through :func:`sb3_mpo.zoo.cli.main`) to spare the start-up of a new interpreter, except the
multi-process study, which needs several processes.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import optuna
import pytest
import rl_zoo3
import torch as th
import yaml
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from sb3_mpo import MPO, NonFiniteError, load_hyperparams
from sb3_mpo.common.hyperparams import parse_policy_kwargs, zoo_entry_to_kwargs
from sb3_mpo.common.threads import set_torch_threads
from sb3_mpo.zoo import ALGO_NAME, HYPERPARAMS_PATH, register
from sb3_mpo.zoo.checks import check_mpo_hyperparams, check_zoo_entry, matches_annotation
from sb3_mpo.zoo.cli import main
from sb3_mpo.zoo.exp_manager import MPOExperimentManager
from sb3_mpo.zoo.hyperparams_opt import TORSOS, convert_mpo_params, sample_mpo_params

ENV_ID = "Pendulum-v1"
# Small networks and batches: the tests check the plumbing, not learning
FAST = ["batch_size:32", "n_action_samples:4", "policy_kwargs:dict(net_arch=[32, 32])"]
SHIPPED_ENVS = [
    "Pendulum-v1",
    "CartPole-v1",
    "LunarLander-v3",
    "LunarLanderContinuous-v3",
    "BipedalWalker-v3",
    "HalfCheetah-v5",
    "Hopper-v5",
    "Walker2d-v5",
    "Ant-v5",
    "Humanoid-v5",
    "Swimmer-v5",
    "MountainCarContinuous-v0",
]


def zoo(command: str, *flags: Any) -> None:
    """Run ``python -m sb3_mpo.zoo COMMAND FLAGS`` in this process."""
    main([command, *map(str, flags)])


def read_yaml(path: Path) -> Any:
    """Read a file written by rl_zoo3 (config.yml holds an OrderedDict)."""
    return yaml.load(path.read_text(), Loader=yaml.UnsafeLoader)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log folder holding one short MPO run on Pendulum-v1, trained with the shipped hyperparameters."""
    log_folder = tmp_path_factory.mktemp("logs")
    zoo(
        "train",
        *("--algo", ALGO_NAME, "--env", ENV_ID, "-f", log_folder, "--seed", 0, "-n", 300),
        *("--eval-freq", 250, "--eval-episodes", 1),
        *("--hyperparams", "learning_starts:50", *FAST),
    )
    return log_folder


def test_shipped_hyperparameters() -> None:
    text = HYPERPARAMS_PATH.read_text()
    entries = yaml.safe_load(text)
    assert set(SHIPPED_ENVS) | {"default", "atari"} == set(entries)  # rl_zoo3 reads `atari` for any Atari game
    # every entry merges the one shared block, the MuJoCo ones through HalfCheetah-v5's, which adds their torso
    assert text.count("<<: *default") + text.count("<<: *mujoco") == len(SHIPPED_ENVS) + 1
    assert entries[ENV_ID]["n_timesteps"] == 20_000
    for env_id in [*SHIPPED_ENVS, "atari"]:
        if env_id != "atari":
            gym.spec(env_id)  # a registered id and version
        entry = dict(entries[env_id])
        assert set(entries["default"]) <= set(entry)
        check_zoo_entry(entry)
        # rl_zoo3 takes its experiment keys out and evaluates policy_kwargs before the check, as this reads them
        check_mpo_hyperparams({**zoo_entry_to_kwargs(entry), "policy": entry["policy"]})


def test_register() -> None:
    register()
    register()
    assert rl_zoo3.ALGOS[ALGO_NAME] is MPO
    assert HYPERPARAMS_SAMPLER[ALGO_NAME] is sample_mpo_params
    assert HYPERPARAMS_CONVERTER[ALGO_NAME] is convert_mpo_params
    assert rl_zoo3.ALGOS["sac"].__name__ == "SAC"


def test_train_writes_log_folder(trained: Path) -> None:
    run = trained / ALGO_NAME / f"{ENV_ID}_1"
    for name in ("Pendulum-v1.zip", "best_model.zip", "evaluations.npz", "0.monitor.csv"):
        assert (run / name).is_file(), name
    for name in ("config.yml", "args.yml", "command.txt"):
        assert (run / ENV_ID / name).is_file(), name
    config = dict(read_yaml(run / ENV_ID / "config.yml"))
    assert config["n_timesteps"] == 20_000  # from the shipped file, -n only shortened the run
    assert config["learning_starts"] == 50
    args = read_yaml(run / ENV_ID / "args.yml")
    assert args["conf_file"] == str(HYPERPARAMS_PATH)
    evaluations = np.load(run / "evaluations.npz")
    assert evaluations["timesteps"].tolist() == [250]
    model = MPO.load(run / "Pendulum-v1.zip", env=gym.make(ENV_ID))
    assert model.batch_size == 32 and model.n_action_samples == 4


def test_training_continues_from_a_trained_agent_and_its_settings_are_checked(trained: Path, tmp_path: Path) -> None:
    """-i loads the agent with the entry's hyperparameters as load's keywords: they go through the constructor's checks
    (here a bound that cannot bind over the entry's 4 sampled actions), and valid ones continue its training."""
    agent = trained / ALGO_NAME / f"{ENV_ID}_1" / f"{ENV_ID}.zip"
    common = ("--algo", ALGO_NAME, "--env", ENV_ID, "-f", tmp_path, "-n", 100, "--eval-freq", -1, "-i", agent)
    with pytest.raises(ValueError, match=r"^MPO: epsilon=2\.0 is invalid with n_action_samples=4"):
        zoo("train", *common, "--hyperparams", "learning_starts:50", *FAST, "epsilon:2.0")
    zoo("train", *common, "--hyperparams", "learning_starts:50", *FAST)
    (saved,) = tmp_path.glob(f"{ALGO_NAME}/{ENV_ID}_*/{ENV_ID}.zip")  # the refused run saved nothing
    continued = MPO.load(saved)
    # rl_zoo3 counts the new run's steps from 0; the updates go on from the agent's
    assert continued.num_timesteps == 100 and continued._n_updates > MPO.load(agent)._n_updates > 0


def test_enjoy(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zoo("enjoy", "--algo", ALGO_NAME, "--env", ENV_ID, "-f", trained, "--no-render", "-n", 200)
    output = capsys.readouterr().out
    assert "1 Episodes" in output
    assert "Mean reward:" in output


def test_other_algorithms_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zoo(
        "train",
        *("--algo", "sac", "--env", ENV_ID, "-f", tmp_path, "-n", 150, "--eval-freq", -1),
        *("--hyperparams", "learning_starts:100", "batch_size:32", "policy_kwargs:dict(net_arch=[32, 32])"),
    )
    output = capsys.readouterr().out
    assert f"{Path(rl_zoo3.__file__).parent / 'hyperparams' / 'sac.yml'}" in output
    assert (tmp_path / "sac" / f"{ENV_ID}_1" / f"{ENV_ID}.zip").is_file()


def test_conf_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf_file = tmp_path / "custom.yml"
    conf_file.write_text(yaml.safe_dump({ENV_ID: {"policy": "MlpPolicy", "n_timesteps": 120, "learning_starts": 200}}))
    zoo("train", "--algo", ALGO_NAME, "--env", ENV_ID, "-f", tmp_path, "--eval-freq", -1, "--conf-file", conf_file)
    assert f"Loading hyperparameters from: {conf_file}" in capsys.readouterr().out
    assert MPO.load(tmp_path / ALGO_NAME / f"{ENV_ID}_1" / f"{ENV_ID}.zip", env=gym.make(ENV_ID)).num_timesteps == 120


@pytest.fixture
def unknown_env() -> Any:
    env_id = "ZooFallbackPendulum-v0"
    gym.register(env_id, entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv", max_episode_steps=200)
    yield env_id
    del gym.registry[env_id]


def test_unknown_env_uses_default_block(tmp_path: Path, unknown_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    zoo(
        "train",
        *("--algo", ALGO_NAME, "--env", unknown_env, "-f", tmp_path, "-n", 100, "--eval-freq", -1),
        *("--hyperparams", "learning_starts:100"),
    )
    assert "Using 'default' hyperparameters" in capsys.readouterr().out  # rl_zoo3's own announcement
    run = tmp_path / ALGO_NAME / f"{unknown_env}_1"
    assert (run / f"{unknown_env}.zip").is_file()
    default = yaml.safe_load(HYPERPARAMS_PATH.read_text())["default"]
    assert read_yaml(run / unknown_env / "config.yml") == {**default, "learning_starts": 100}


def test_atari_game_uses_the_atari_entry(tmp_path: Path) -> None:
    """An Atari game without an entry of its own trains with the file's `atari` entry: images, CnnPolicy, 4 frames."""
    zoo(
        "train",
        *("--algo", ALGO_NAME, "--env", "PongNoFrameskip-v4", "-f", tmp_path, "-n", 100, "--eval-freq", -1),
        *("--hyperparams", "buffer_size:200", "learning_starts:50", "batch_size:8"),
    )
    run = tmp_path / ALGO_NAME / "PongNoFrameskip-v4_1"
    atari = yaml.safe_load(HYPERPARAMS_PATH.read_text())["atari"]
    config = read_yaml(run / "PongNoFrameskip-v4" / "config.yml")
    assert config == {**atari, "buffer_size": 200, "learning_starts": 50, "batch_size": 8}
    model = MPO.load(run / "PongNoFrameskip-v4.zip")
    assert model.observation_space.shape == (4, 84, 84)  # 4 stacked 84x84 frames, channels first
    assert type(model.policy).__name__ == "CnnPolicy" and model.num_timesteps == 100


@pytest.mark.parametrize(
    "hyperparam, message",
    [
        ("n_action_sample:10", r"Unknown hyperparameter 'n_action_sample' for MPO\. Did you mean 'n_action_samples'\?"),
        ("batch_size:'64'", r"MPO: batch_size='64' is invalid, expected a positive integer"),
        ("epsilon_std:'1e-5'", r"MPO: epsilon_std='1e-5' is invalid, expected a finite positive float.*!!float"),
        ("policy_kwargs:dict(net_arc=[64])", r"'policy_kwargs' key 'net_arc' for MPOPolicy\. Did you mean 'net_arch'\?"),
        (
            "policy_kwargs:dict(action_bounding='tan')",
            r"policy_kwargs\['action_bounding'\]='tan' .* expected one of 'clip', 'tanh'",
        ),
        ("policy_kwargs:dict(net_arch=[0])", r"MPO: policy_kwargs\['net_arch'\]=\[0\] is invalid, expected None, a list"),
        ("learning_rate:'fast'", r"'learning_rate'='fast' is neither a number nor a linear schedule"),
        ("actor_learning_rate:'slow'", r"'actor_learning_rate'='slow' is neither a number nor a linear schedule"),
        ("learning_rate:True", r"'learning_rate'=True is neither a number nor a linear schedule"),
        ("noise_type:'normal'", r"'noise_type' is not used by MPO \(MPO's Gaussian policy explores by itself"),
        ("ent_coef:'auto'", r"'ent_coef' is not used by MPO \(SAC's entropy bonus: MPO's E-step temperature"),
        ("policy_delay:2", r"'policy_delay' is not used by MPO \(TD3's delayed policy updates"),
        ("seed:3", r"'seed' is set by rl_zoo3's --seed flag"),
        ("epsilon:-1.0", r"MPO: epsilon=-1.0 is invalid"),
        ("buffer_size:10", r"MPO: buffer_size=10 is invalid, expected an integer >= batch_size"),  # left to MPO's constructor
    ],
)
def test_bad_hyperparameter_names_the_key(tmp_path: Path, hyperparam: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        zoo("train", "--algo", ALGO_NAME, "--env", ENV_ID, "-f", tmp_path, "-n", 100, "--hyperparams", hyperparam)


@pytest.mark.parametrize(
    "value, annotation, expected",
    [
        (3, float, True),
        (True, float, False),
        (3.0, int, False),
        (None, float | None, True),
        ((2, "episode"), int | tuple[int, str], True),
        ((2, 3), int | tuple[int, str], False),
        ([64, 64], list[int] | dict[str, list[int]] | None, True),
        (dict(pi=[64], qf=[64]), list[int] | dict[str, list[int]] | None, True),
        (["64"], list[int], False),
        (MPO, type[MPO], True),
        (dict, type[MPO], False),
        (lambda _: 1e-3, float | Schedule, True),
        ("lin_1e-3", float | Schedule, False),
        (np.int64(3), int, True),
        (np.float32(0.5), float, True),
        (np.bool_(True), int, False),
    ],
)
def test_matches_annotation(value: Any, annotation: Any, expected: bool) -> None:
    assert matches_annotation(value, annotation) is expected


@pytest.mark.parametrize(
    "hyperparams",
    [
        dict(learning_rate="3e-4"),
        dict(batch_size=None),
        dict(learning_starts=float("nan")),
        dict(tau=float("inf")),
        dict(n_action_samples=2.5),
        dict(policy_kwargs=dict(net_arch=[32, "a"])),
        dict(policy_kwargs=dict(net_arch=dict(pi=[64]))),
    ],
)
def test_zoo_and_constructor_refuse_the_same_values(hyperparams: dict[str, Any]) -> None:
    """The RL Zoo check and MPO's constructor run the same check: the same values are refused with the same message."""
    with pytest.raises(ValueError) as constructor:
        MPO("MlpPolicy", ENV_ID, **hyperparams)
    with pytest.raises(ValueError) as zoo_check:
        check_mpo_hyperparams(hyperparams)
    assert str(zoo_check.value) == str(constructor.value)


GAUSSIAN_PARAMS = {"n_action_samples", "epsilon_mean", "epsilon_std", "action_bounding", "init_std", "policy_improvement"}


@pytest.mark.parametrize("env_id, n_actions", [(ENV_ID, 1), ("CartPole-v1", 0)])
def test_sampler_and_converter(env_id: str, n_actions: int) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        trial = study.ask()
        sampled = sample_mpo_params(trial, n_actions=n_actions, n_envs=1, additional_args={})
        # rl_zoo3 rebuilds the hyperparameters of a stored trial (--trial-id) with the converter
        assert convert_mpo_params(trial.params) == sampled
        assert 0.97 <= sampled["gamma"] <= 0.9999 and sampled["batch_size"] in (64, 128, 256, 512)
        assert trial.user_attrs == {"gamma": sampled["gamma"], "batch_size": sampled["batch_size"]}
        # Each action space gets the settings its policy uses, and only those
        if n_actions > 0:
            assert GAUSSIAN_PARAMS <= set(trial.params) and "epsilon_policy" not in trial.params
        else:
            assert not GAUSSIAN_PARAMS & set(trial.params) and 1e-3 <= sampled["epsilon_policy"] <= 1e-1
        assert trial.params["torso"] in TORSOS
        # A distributional critic is searched only where it is accepted: Box actions with n-step targets
        assert ("critic" in trial.params) == (n_actions > 0 and sampled["q_target"] == "n_step")
        # and its return draws only for a mixture
        mixture = "critic_mixture" in sampled["policy_kwargs"]
        assert ("mixture_return_samples" in trial.params) == mixture == ("mixture_return_samples" in sampled)
        # The parametric improvement's sample count only where it is used
        assert ("parametric_samples" in trial.params) == (sampled.get("policy_improvement") == "parametric")
        # CrossQ's critic only where it is accepted: not with SimBa's torso or the parametric improvement
        crossq_accepted = (
            n_actions > 0 and trial.params["torso"] != "residual" and sampled["policy_improvement"] == "nonparametric"
        )
        assert ("critic_normalization" in trial.params) == crossq_accepted
        # A pair of critics only for expected values (with Box actions)
        assert ("n_critics" in trial.params) == (n_actions > 0 and trial.params.get("critic", "expected") == "expected")
        assert sampled.get("policy_kwargs", {}).get("n_critics", 1) == trial.params.get("n_critics", 1)
        assert sampled["policy_kwargs"].get("init_std") == trial.params.get("init_std")
        check_mpo_hyperparams(sampled)
        model = MPO("MlpPolicy", env_id, **sampled)  # the constructor accepts every sample
        beta1 = trial.params["adam_beta1"]
        assert model.critic.optimizer.defaults["betas"] == (beta1, 0.999)
        assert model.actor.optimizer.defaults["betas"] == (beta1, trial.params["actor_adam_beta2"])
        actor_rate = trial.params["learning_rate"] * trial.params["actor_learning_rate_ratio"]
        assert (
            model.actor_lr_schedule(1.0) == pytest.approx(actor_rate)
            and model.lr_schedule(1.0) == trial.params["learning_rate"]
        )
        study.tell(trial, 0.0)


def test_converter_maps_torsos_and_critics_to_policy_kwargs() -> None:
    base = {"one_minus_gamma": 0.01, "batch_size_pow": 8, "net_arch": "medium", "q_target": "1-step"}
    assert convert_mpo_params({**base, "torso": "layer_norm", "critic": "mixture"})["policy_kwargs"] == {
        "net_arch": [256, 256],
        "layer_norm": True,
        "activation_fn": nn.ELU,
        "critic_mixture": 5,
    }
    assert convert_mpo_params({**base, "torso": "residual"})["policy_kwargs"] == {"net_arch": [256, 256], "residual": True}
    assert convert_mpo_params({**base, "critic_normalization": "batch_renorm"})["policy_kwargs"] == {
        "net_arch": [256, 256],
        "batch_renorm": True,
    }
    assert convert_mpo_params({**base, "n_critics": 2})["policy_kwargs"] == {"net_arch": [256, 256], "n_critics": 2}
    assert convert_mpo_params({**base, "init_std": 0.2})["policy_kwargs"] == {"net_arch": [256, 256], "init_std": 0.2}
    assert convert_mpo_params({**base, "adam_beta1": 0.5})["policy_kwargs"] == {
        "net_arch": [256, 256],
        "optimizer_kwargs": {"betas": (0.5, 0.999)},
    }
    # the actor's own second moment only where it differs from the critic's
    assert convert_mpo_params({**base, "adam_beta1": 0.5, "actor_adam_beta2": 0.99})["policy_kwargs"] == {
        "net_arch": [256, 256],
        "optimizer_kwargs": {"betas": (0.5, 0.999)},
        "actor_optimizer_kwargs": {"betas": (0.5, 0.99)},
    }
    assert "actor_optimizer_kwargs" not in convert_mpo_params({**base, "actor_adam_beta2": 0.999})["policy_kwargs"]
    assert convert_mpo_params({**base, "actor_adam_beta2": 0.99})["policy_kwargs"]["actor_optimizer_kwargs"] == {
        "betas": (0.9, 0.99)
    }
    # the actor's own rate only where it differs from learning_rate (studies from before it was searched: none)
    assert convert_mpo_params({**base, "learning_rate": 1e-3, "actor_learning_rate_ratio": 0.1})["actor_learning_rate"] == (
        pytest.approx(1e-4)
    )
    assert "actor_learning_rate" not in convert_mpo_params({**base, "learning_rate": 1e-3, "actor_learning_rate_ratio": 1.0})


def test_converter_maps_the_critic_target_and_reads_studies_that_sampled_n_steps() -> None:
    base = {"one_minus_gamma": 0.01, "batch_size_pow": 8, "net_arch": "small"}
    assert [
        (params["q_target"], params["n_steps"])
        for params in (convert_mpo_params({**base, "q_target": choice}) for choice in ("retrace", "1-step", "5-step"))
    ] == [("retrace", 1), ("n_step", 1), ("n_step", 5)]
    # A trial stored before Retrace joined the search space keeps its n-step returns
    assert convert_mpo_params({**base, "n_steps": 3}) == {
        "gamma": 1 - 0.01,
        "batch_size": 256,
        "policy_kwargs": {"net_arch": [64, 64]},
        "n_steps": 3,
        "q_target": "n_step",
    }


def test_optimize_discrete(tmp_path: Path) -> None:
    # rl_zoo3 passes n_actions=0 for a Discrete space: the search tunes the categorical trust region
    storage = str(tmp_path / "mpo.log")
    zoo(
        "train",
        *("--algo", ALGO_NAME, "--env", "CartPole-v1", "-f", tmp_path, "-n", 120, "--eval-episodes", 1, "--seed", 0),
        *("--hyperparams", "learning_starts:110", "-optimize", "--n-trials", 1, "--pruner", "none", "--no-optim-plots"),
        *("--storage", storage, "--study-name", "d"),
    )
    (trial,) = optuna.load_study(study_name="d", storage=open_storage(storage)).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert "epsilon_policy" in trial.params and not GAUSSIAN_PARAMS & set(trial.params)


def open_storage(storage: str) -> Any:
    """The Optuna storage rl_zoo3 opens for ``--storage``: a journal file for ``.log`` paths, else an RDB URL."""
    if storage.endswith(".log"):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    return storage


@pytest.mark.parametrize("backend", ["journal", "rdb"])
def test_optimize_with_storage(tmp_path: Path, backend: str) -> None:
    # SQLite stands in for PostgreSQL: both are Optuna RDB storages behind a URL
    storage = str(tmp_path / "mpo.log") if backend == "journal" else f"sqlite:///{tmp_path / 'mpo.db'}"
    zoo(
        "train",
        *("--algo", ALGO_NAME, "--env", ENV_ID, "-f", tmp_path, "-n", 120, "--eval-episodes", 1, "--seed", 0),
        *("--hyperparams", "learning_starts:110"),
        *("-optimize", "--n-trials", 2, "--n-startup-trials", 1, "--pruner", "none", "--no-optim-plots"),
        *("--storage", storage, "--study-name", "s"),
    )
    trials = optuna.load_study(study_name="s", storage=open_storage(storage)).trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    critic = {"critic"} if trials[1].params["q_target"] != "retrace" else set()  # searched with n-step targets only
    parametric = {"parametric_samples"} if trials[1].params["policy_improvement"] == "parametric" else set()
    mixture = {"mixture_return_samples"} if trials[1].params.get("critic") == "mixture" else set()
    pair = {"n_critics"} if trials[1].params.get("critic", "expected") == "expected" else set()
    crossq_accepted = trials[1].params["torso"] != "residual" and trials[1].params["policy_improvement"] == "nonparametric"
    crossq = {"critic_normalization"} if crossq_accepted else set()
    assert set(trials[1].params) == {
        *(
            "one_minus_gamma",
            "learning_rate",
            "actor_learning_rate_ratio",
            "adam_beta1",
            "actor_adam_beta2",
            "batch_size_pow",
            "n_action_samples",
        ),
        *("epsilon", "epsilon_mean"),
        *("epsilon_std", "q_target", "tau", "net_arch", "action_bounding", "replay_fraction", "policy_improvement"),
        *("torso", "init_std", *critic, *parametric, *mixture, *pair, *crossq),
    }
    # Train with a stored trial's hyperparameters (rl_zoo3 ignores --trial-id 0, hence trial 1)
    zoo(
        "train",
        *("--algo", ALGO_NAME, "--env", ENV_ID, "-f", tmp_path, "-n", 100, "--eval-freq", -1),
        *("--hyperparams", "learning_starts:100", "--storage", storage, "--study-name", "s", "--trial-id", 1),
    )
    config = dict(
        yaml.load((tmp_path / ALGO_NAME / f"{ENV_ID}_2" / ENV_ID / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    )
    assert config["gamma"] == pytest.approx(1 - trials[1].params["one_minus_gamma"])
    assert config["batch_size"] == 2 ** trials[1].params["batch_size_pow"]


def test_diverged_trial_is_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    def diverge(self: ExperimentManager, trial: optuna.Trial) -> float:
        raise NonFiniteError("MPO: non-finite critic_loss=nan")

    monkeypatch.setattr(ExperimentManager, "objective", diverge)
    manager = MPOExperimentManager(argparse.Namespace(conf_file=None), ALGO_NAME, ENV_ID, "logs")
    with pytest.raises(optuna.TrialPruned, match="critic_loss=nan"):
        manager.objective(optuna.trial.FixedTrial({}))


def test_another_algorithms_trial_fails_as_with_rl_zoo3(monkeypatch: pytest.MonkeyPatch) -> None:
    """SAC's bad settings end its search as rl_zoo3's do (a ValueError), not as an MPO trial's pruned ones."""

    def refused(self: ExperimentManager, trial: optuna.Trial) -> float:
        raise ValueError("target_entropy='foo' is invalid")

    monkeypatch.setattr(ExperimentManager, "objective", refused)
    manager = MPOExperimentManager(argparse.Namespace(conf_file=None), "sac", ENV_ID, "logs")
    with pytest.raises(ValueError, match="target_entropy='foo'"):
        manager.objective(optuna.trial.FixedTrial({}))
    mpo = MPOExperimentManager(argparse.Namespace(conf_file=None), ALGO_NAME, ENV_ID, "logs")
    with pytest.raises(optuna.TrialPruned, match="target_entropy='foo'"):
        mpo.objective(optuna.trial.FixedTrial({}))


def test_a_trial_whose_sampled_settings_clash_with_the_entrys_is_pruned_not_fatal(tmp_path: Path) -> None:
    """An entry with value_normalization=True and trials that draw a mixture critic or CrossQ's: those trials are
    pruned (their settings refused by the constructor) and the search goes on to its other trials."""
    storage = str(tmp_path / "mpo.log")
    zoo(
        "train",
        *("--algo", ALGO_NAME, "--env", ENV_ID, "-f", tmp_path, "-n", 120, "--eval-episodes", 1, "--seed", 0),
        *("--hyperparams", "learning_starts:110", "value_normalization:True", "-optimize", "--n-trials", 8),
        *("--sampler", "random", "--pruner", "none", "--no-optim-plots", "--storage", storage, "--study-name", "v"),
    )
    trials = optuna.load_study(study_name="v", storage=open_storage(storage)).trials
    assert len(trials) == 8
    states = {trial.number: trial.state for trial in trials}
    clashing = {
        trial.number
        for trial in trials
        if trial.params.get("critic") == "mixture" or trial.params.get("critic_normalization") == "batch_renorm"
    }
    assert clashing and clashing != set(states), "the seed must draw clashing and accepted trials alike"
    assert all(states[number] == optuna.trial.TrialState.PRUNED for number in clashing)
    assert all(states[number] == optuna.trial.TrialState.COMPLETE for number in set(states) - clashing)


def test_a_search_with_her_samples_only_what_mpo_takes_with_it() -> None:
    """With HerReplayBuffer: 1-step targets and pure replay, HER's relabelling searched as rl_zoo3 searches it for SAC
    (on top of the entry's HER settings), and a stored trial converted back to the same settings."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    her = {"using_her_replay_buffer": True, "her_kwargs": {"copy_info_dict": True}}
    for _ in range(8):
        trial = study.ask()
        sampled = sample_mpo_params(trial, n_actions=2, n_envs=1, additional_args=her)
        assert (sampled["q_target"], sampled["n_steps"], sampled["replay_fraction"]) == ("n_step", 1, 1.0)
        assert "q_target" not in trial.params and "replay_fraction" not in trial.params
        buffer = sampled["replay_buffer_kwargs"]
        assert buffer["copy_info_dict"] is True and 1 <= buffer["n_sampled_goal"] <= 5
        assert buffer["goal_selection_strategy"] in ("final", "episode", "future")
        stored = convert_mpo_params(trial.params)
        assert stored["replay_buffer_kwargs"] == {key: buffer[key] for key in ("n_sampled_goal", "goal_selection_strategy")}
        study.tell(trial, 0.0)


def test_plot_from_file_starts(capsys: pytest.CaptureFixture[str]) -> None:
    """rl_zoo3's plot_from_file runs under the zoo command (its usage printed), as `python -m rl_zoo3.cli` runs it."""
    pytest.importorskip("rliable")
    with pytest.raises(SystemExit) as exit_code:
        zoo("plot_from_file", "--help")
    assert exit_code.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.slow
def test_processes_share_a_journal_study(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sb3_mpo.zoo", "train", "--algo", ALGO_NAME, "--env", ENV_ID, "-f", str(tmp_path)]
    command += ["-n", "120", "--eval-episodes", "1", "--hyperparams", "learning_starts:110", "-optimize", "--n-trials", "1"]
    command += ["--no-optim-plots", "--storage", str(tmp_path / "mpo.log"), "--study-name", "shared"]
    workers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr.decode()
    trials = optuna.load_study(study_name="shared", storage=open_storage(str(tmp_path / "mpo.log"))).trials
    assert sorted(trial.number for trial in trials) == [0, 1]


@pytest.mark.slow
def test_record_video_and_plots(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("moviepy")
    pytest.importorskip("seaborn")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    zoo("record_video", "--algo", ALGO_NAME, "--env", ENV_ID, "-f", trained, "-n", 50, "-o", tmp_path / "videos")
    assert list((tmp_path / "videos").glob("*.mp4"))
    zoo("all_plots", "--algo", ALGO_NAME, "--env", ENV_ID, "-f", trained, "--no-display", "-o", tmp_path / "results")
    assert (tmp_path / "results.pkl").is_file()


@pytest.mark.parametrize(
    "environ, expected",
    [({}, 1), ({"OMP_NUM_THREADS": "2"}, 2), ({"OMP_NUM_THREADS": ""}, 1), ({"OMP_NUM_THREADS": " 3,1 "}, 3)],
)
def test_zoo_commands_run_with_one_torch_thread_unless_told(environ, expected):
    before = th.get_num_threads()
    try:
        assert set_torch_threads(environ) == expected and th.get_num_threads() == expected
    finally:
        th.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "two", "-1", ",2", "4,x", "²"])
def test_an_invalid_thread_count_is_named(value):
    before = th.get_num_threads()
    with pytest.raises(ValueError, match=rf"OMP_NUM_THREADS='{value}' is invalid, expected a positive integer"):
        set_torch_threads({"OMP_NUM_THREADS": value})
    assert th.get_num_threads() == before


def test_shipped_policy_kwargs_are_read_without_eval():
    """RL Zoo's policy_kwargs strings: literals and torch.nn layers are read, anything else is refused by name."""
    parsed = parse_policy_kwargs("dict(layer_norm=True, activation_fn=nn.ELU, net_arch=[256, 256])")
    assert parsed == {"layer_norm": True, "activation_fn": nn.ELU, "net_arch": [256, 256]}
    refused = (
        "dict(activation_fn=nn.functional)",
        "dict(activation_fn=os.system)",
        "dict(net_arch=list(range(3)))",
        "dict(optimizer_kwargs=dict(betas=list((0.5, 0.999))))",
        "dict(**base)",
        "dict(net_arch=[64, 64]",
    )
    for text in refused:
        with pytest.raises(ValueError, match=re.escape(f"policy_kwargs={text!r} is not supported here")):
            parse_policy_kwargs(text)


@pytest.mark.parametrize(
    "text",
    [
        "dict(net_arch=dict(pi=[256, 256], qf=[1024, 1024]))",  # rl_zoo3's crossq.yml
        "dict(layer_norm=True, activation_fn=nn.ELU, batch_renorm=True, optimizer_kwargs=dict(betas=(0.5, 0.999)))",
        "dict(log_std_init=-3, net_arch=[400, 300], use_expln=True)",  # rl_zoo3's sac.yml
    ],
)
def test_policy_kwargs_are_read_as_python_evaluates_them(text):
    """Nested dict(...) calls too: the parser agrees with Python's own evaluation, which RL Zoo uses."""
    assert parse_policy_kwargs(text) == eval(text, {"nn": nn})  # a fixed string: the reference


def test_load_hyperparams_gives_an_entry_as_constructor_arguments(tmp_path):
    """An entry merged with its anchor, RL Zoo's experiment keys left out; the `default` block for an unknown id."""
    path = tmp_path / "mpo.yml"
    path.write_text(
        "default: &default\n  policy: 'MlpPolicy'\n  n_timesteps: !!float 1e6\n  gamma: 0.98\n"
        "Task-v0:\n  <<: *default\n  normalize: true\n  epsilon_mean: !!float 1e-2\n"
        '  policy_kwargs: "dict(layer_norm=True, activation_fn=nn.ELU)"\n'
        "  env_kwargs: {max_episode_steps: 50}\n  monitor_kwargs: {info_keywords: [is_success]}\n"
    )
    expected = {"gamma": 0.98, "epsilon_mean": 1e-2, "policy_kwargs": {"layer_norm": True, "activation_fn": nn.ELU}}
    assert load_hyperparams("Task-v0", path) == expected
    assert load_hyperparams("Unknown-v0", path) == {"gamma": 0.98}
    path.write_text("Task-v0:\n  gamma: 0.98\n")
    with pytest.raises(ValueError, match=re.escape("env_id='Unknown-v0' has no entry in")):
        load_hyperparams("Unknown-v0", path)


def test_load_hyperparams_reads_atari_train_freq_and_schedules_as_rl_zoo3(tmp_path):
    """
    An Atari game without an entry gets the `atari` entry (rl_zoo3's choice), a `train_freq` list becomes SB3's tuple
    and `lin_<float>` becomes a schedule equal to rl_zoo3's `linear_schedule` at every point of the training.
    """
    path = tmp_path / "mpo.yml"
    path.write_text(
        "default: &default\n  gamma: 0.98\n"
        "atari:\n  <<: *default\n  policy: 'CnnPolicy'\n  frame_stack: 4\n  buffer_size: 100000\n"
        "Task-v0:\n  <<: *default\n  train_freq: [1, 'episode']\n  learning_rate: lin_7.3e-4\n"
        "  actor_learning_rate: lin_1e-4\n"
    )
    assert load_hyperparams("PongNoFrameskip-v4", path) == {"gamma": 0.98, "buffer_size": 100000}
    assert load_hyperparams("CartPole-v1", path) == {"gamma": 0.98}
    kwargs = load_hyperparams("Task-v0", path)
    assert kwargs["train_freq"] == (1, "episode")
    reference = rl_zoo3.linear_schedule(7.3e-4)
    for progress_remaining in (1.0, 0.6, 0.25, 0.0):
        assert kwargs["learning_rate"](progress_remaining) == pytest.approx(reference(progress_remaining), rel=1e-12)
        assert kwargs["actor_learning_rate"](progress_remaining) == pytest.approx(1e-4 * progress_remaining, rel=1e-12)
    model = MPO("MlpPolicy", "Pendulum-v1", **kwargs)  # the constructor accepts both as they come
    assert model.train_freq.frequency == 1 and model.lr_schedule(0.5) == pytest.approx(3.65e-4)
    assert model.actor_lr_schedule(0.5) == pytest.approx(5e-5)
    # rl_zoo3's experiment manager reads the actor's schedule as it reads learning_rate's
    processed = MPOExperimentManager._preprocess_schedules({"learning_rate": 1e-3, "actor_learning_rate": "lin_1e-4"})
    for progress_remaining in (1.0, 0.25):
        assert processed["actor_learning_rate"](progress_remaining) == pytest.approx(1e-4 * progress_remaining, rel=1e-12)
    path.write_text("Task-v0:\n  learning_rate: lin_fast\n")
    with pytest.raises(ValueError, match=re.escape("learning_rate='lin_fast' is not a linear schedule 'lin_<float>'")):
        load_hyperparams("Task-v0", path)
