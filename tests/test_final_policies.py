"""The probe that reads a kept final policy each way (benchmarks/final_policies.py)."""

import json

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F
import yaml
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from benchmarks import final_policies
from benchmarks.cli import main as runner
from benchmarks.final_policies import READINGS, kept_finals, policy_spread, record_path
from benchmarks.results import load_result
from benchmarks.suite import load_suite
from sb3_mpo import MPO

SPEC = {
    "name": "kept",
    "description": "Test suite.",
    "eval_episodes": 2,
    "envs": {
        "Pendulum-v1": {
            "steps": 300,
            "eval_freq": 150,
            "seeds": [0],
            "algos": ["mpo", "sac"],
            "hyperparams": {
                "mpo": {"learning_starts": 50, "batch_size": 16, "n_action_samples": 4, "policy_kwargs": "dict(net_arch=[8])"},
                "sac": {"learning_starts": 50, "batch_size": 16, "policy_kwargs": "dict(net_arch=[8])"},
            },
        }
    },
}


def test_policy_spread_reads_the_share_of_means_beyond_the_box_and_the_mean_std():
    model = MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), seed=0)
    observations = np.random.default_rng(0).uniform(-1.0, 1.0, size=(5, 3)).astype(np.float32)
    with th.no_grad():
        model.actor.mu.weight.zero_()
        model.actor.std.weight.zero_()
        model.actor.mu.bias.fill_(1.3)
        model.actor.std.bias.fill_(0.2)
    spread = policy_spread(model, observations)
    expected_std = F.softplus(th.tensor(0.2) + model.actor.std_offset) + model.actor.min_std
    assert spread == {"mean_outside_box": 1.0, "policy_std": pytest.approx(float(expected_std), rel=1e-6)}
    with th.no_grad():
        model.actor.mu.bias.fill_(-0.4)
    assert policy_spread(model, observations)["mean_outside_box"] == 0.0


def test_a_kept_final_policy_is_read_each_way_on_the_runs_evaluation_episodes(tmp_path, monkeypatch, capsys):
    """Each reading against evaluate_policy on the kept model, on an env seeded with the run's evaluation seed."""
    suite_path = tmp_path / "kept.yml"
    suite_path.write_text(yaml.safe_dump(SPEC))
    results, store = tmp_path / "results", tmp_path / "store"
    checkpoints = results / ".checkpoints"
    monkeypatch.setattr(final_policies, "RESULTS", store)
    monkeypatch.setattr(final_policies, "PAGE", tmp_path / "page.md")
    monkeypatch.setattr(final_policies, "READING", tmp_path / "reading.md")
    assert runner(["run", str(suite_path), "--results", str(results), "--workers", "1", "--keep-final"]) == 0
    mpo_job, sac_job = load_suite(suite_path).jobs
    assert mpo_job.algo == "mpo" and sac_job.final_path(checkpoints).exists()
    assert kept_finals(load_suite(suite_path).jobs, checkpoints) == [mpo_job], "SAC's finals have no second reading"

    final_policies.main(["run", str(suite_path), "--checkpoints", str(checkpoints), "--results", str(results)])
    record = json.loads(record_path(mpo_job, store).read_text())
    assert record["num_timesteps"] == 300 and record["episodes"] == 2 and record["eval_seed"] == 10_000
    assert record["run_final_return"] == load_result(mpo_job.result_path(results), mpo_job)["final_return"]

    model = MPO.load(mpo_job.final_path(checkpoints) / "model.zip", device="cpu")
    for reading in READINGS:
        model.actor.deterministic_action = "mean" if reading == "mean" else "mode"
        th.manual_seed(10_000)
        env = make_vec_env("Pendulum-v1", seed=10_000)
        returns, lengths = evaluate_policy(model, env, 2, deterministic=reading != "sampled", return_episode_rewards=True)
        assert record["readings"][reading]["lengths"] == lengths
        np.testing.assert_allclose(record["readings"][reading]["returns"], returns, rtol=1e-5)
        assert record["readings"][reading]["mean"] == pytest.approx(np.mean(returns), rel=1e-5)
    assert record["readings"]["sampled"]["returns"] != record["readings"]["mode"]["returns"]
    assert 0.0 <= record["mean_outside_box"] <= 1.0 and record["policy_std"] > 0.0

    page = (tmp_path / "page.md").read_text()
    values = {name: record["readings"][name]["mean"] for name in READINGS}
    assert f"| mpo | 0 | 300 | 2 | {record['run_final_return']:.0f} | {values['mode']:.0f} | {values['mean']:.0f} |" in page
    assert "Mean minus mode over 1 run: " in page and "## kept, Pendulum-v1" in page

    def read_again(*args, **kwargs):
        raise AssertionError("a stored record is not read again")

    monkeypatch.setattr(final_policies, "read_final", read_again)
    final_policies.main(["run", str(suite_path), "--checkpoints", str(checkpoints), "--results", str(results)])
    final_policies.main(["run", str(suite_path), "--checkpoints", str(tmp_path / "none"), "--algos", "mpo"])
    assert "no kept final state of" in capsys.readouterr().err


def test_the_probe_refuses_a_reading_of_no_episodes(capsys):
    with pytest.raises(SystemExit):
        final_policies.main(["run", "tiny", "--episodes", "0"])
    assert "--episodes must be a positive integer, got 0" in capsys.readouterr().err
