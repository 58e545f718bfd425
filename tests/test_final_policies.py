"""The probe that reads a kept final policy each way (benchmarks/final_policies.py)."""

import json

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F
import yaml
from scipy.stats import norm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from benchmarks import final_policies
from benchmarks.final_policies import READINGS, kept_finals, policy_spread, record_path, summary_line, unreadable
from benchmarks.results import load_result
from benchmarks.suite import load_suite
from sb3_mpo import MPO

SMALL = {"learning_starts": 50, "batch_size": 16, "n_action_samples": 4}
SPEC = {
    "name": "kept",
    "description": "Test suite.",
    "eval_episodes": 2,
    "variants": {"mpo_tanh": {"algo": "mpo", "hyperparams": {"policy_kwargs": "dict(net_arch=[8], action_bounding='tanh')"}}},
    "envs": {
        "Pendulum-v1": {
            "steps": 300,
            "eval_freq": 150,
            "seeds": [0],
            "algos": ["mpo", "mpo_tanh"],
            "hyperparams": {
                # observations normalised, so that the kept statistics matter
                "mpo": {**SMALL, "normalize": True, "policy_kwargs": "dict(net_arch=[8])"},
                "mpo_tanh": SMALL,
            },
        }
    },
}


def censored_normal_mean(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """E[clip(u, -1, 1)] for u ~ N(mean, std²), from scipy's normal distribution."""
    low, high = norm.cdf(-1.0, mean, std), norm.sf(1.0, mean, std)
    inside = mean * (norm.cdf(1.0, mean, std) - low) + std**2 * (norm.pdf(-1.0, mean, std) - norm.pdf(1.0, mean, std))
    return -low + high + inside


def test_policy_spread_measures_mode_against_mean_the_share_beyond_the_box_and_the_std():
    model = MPO("MlpPolicy", "HalfCheetah-v5", policy_kwargs=dict(net_arch=[8]), learning_starts=0, seed=0)
    observations = np.random.default_rng(0).normal(size=(5, 17)).astype(np.float32)
    means = np.array([1.3, -1.3, 0.2, -0.4, 2.0, 0.99])
    with th.no_grad():
        model.actor.mu.weight.zero_()
        model.actor.std.weight.zero_()
        model.actor.mu.bias.copy_(th.as_tensor(means))
        model.actor.std.bias.fill_(0.2)
    model.policy.set_training_mode(True)
    spread = policy_spread(model, observations)
    std = float(F.softplus(th.tensor(0.2) + model.actor.std_offset) + model.actor.min_std)
    gap = np.abs(np.clip(means, -1.0, 1.0) - censored_normal_mean(means, np.full(6, std))).mean()
    assert spread["mean_outside_box"] == pytest.approx(3 / 6)
    assert spread["policy_std"] == pytest.approx(std, rel=1e-6)
    assert spread["mode_mean_gap"] == pytest.approx(gap, rel=1e-5)
    assert not model.policy.training, "read in evaluation mode"


def test_the_summary_compares_each_reading_with_the_mode_over_runs():
    def record(mode: float, mean: float, sampled: float) -> dict:
        return {"readings": {"mode": {"mean": mode}, "mean": {"mean": mean}, "sampled": {"mean": sampled}}}

    line = summary_line([record(1000.0, 900.0, 700.0), record(500.0, 550.0, 400.0), record(200.0, 200.0, 300.0)])
    mean_minus_mode, sampled_minus_mode = np.array([-100.0, 50.0, 0.0]), np.array([-300.0, -100.0, 100.0])
    assert line == (
        f"Mean minus mode over 3 runs: {mean_minus_mode.mean():.1f} ± {mean_minus_mode.std():.1f} (at or above the mode in 2 "
        f"of 3); sampled minus mode: {sampled_minus_mode.mean():.1f} ± {sampled_minus_mode.std():.1f}."
    )


def test_a_kept_final_policy_is_read_each_way_on_the_runs_evaluation_episodes(tmp_path, monkeypatch, capsys):
    """Each reading against evaluate_policy on the kept model and statistics, on an env seeded with the evaluation seed."""
    from benchmarks.cli import main as runner

    suite_path = tmp_path / "kept.yml"
    suite_path.write_text(yaml.safe_dump(SPEC))
    results, store = tmp_path / "results", tmp_path / "store"
    checkpoints = results / ".checkpoints"
    monkeypatch.setattr(final_policies, "RESULTS", store)
    monkeypatch.setattr(final_policies, "PAGE", tmp_path / "page.md")
    monkeypatch.setattr(final_policies, "READING", tmp_path / "reading.md")
    assert runner(["run", str(suite_path), "--results", str(results), "--workers", "1", "--keep-final"]) == 0
    job, tanh_job = load_suite(suite_path).jobs
    assert kept_finals([job, tanh_job], checkpoints) == [job, tanh_job]

    final_policies.main(["run", str(suite_path), "--checkpoints", str(checkpoints), "--results", str(results)])
    assert (
        f"skipped: {tanh_job.name}: its actor (GaussianActor, action_bounding='tanh') does not clip" in capsys.readouterr().err
    )
    assert not record_path(tanh_job, store).exists()
    record = json.loads(record_path(job, store).read_text())
    assert record["num_timesteps"] == 300 and record["episodes"] == 2 and record["eval_seed"] == 10_000
    assert record["run_final_return"] == load_result(job.result_path(results), job)["final_return"]

    final = job.final_path(checkpoints)
    model = MPO.load(final / "model.zip", device="cpu")
    for reading in READINGS:
        model.actor.deterministic_action = "mean" if reading == "mean" else "mode"
        env = VecNormalize.load(str(final / "vec_normalize.pkl"), make_vec_env("Pendulum-v1", seed=10_000))
        env.training, env.norm_reward = False, False
        visited = []
        th.manual_seed(10_000)
        returns, lengths = evaluate_policy(
            model,
            env,
            2,
            deterministic=reading != "sampled",
            return_episode_rewards=True,
            callback=lambda local, _, kept=visited: kept.append(local["observations"][0].copy()),
        )
        assert record["readings"][reading]["lengths"] == lengths
        np.testing.assert_allclose(record["readings"][reading]["returns"], returns, rtol=1e-5)
        if reading == "mode":
            model.actor.deterministic_action = "mode"
            for key, value in policy_spread(model, np.stack(visited)).items():
                assert record[key] == pytest.approx(value, rel=1e-5), key
            assert len(visited) == sum(lengths)
    assert record["readings"]["sampled"]["returns"] != record["readings"]["mode"]["returns"]

    page = (tmp_path / "page.md").read_text()
    shown = {name: round(record["readings"][name]["mean"]) for name in READINGS}
    difference = shown["mean"] - shown["mode"]
    row = f"| mpo | 0 | 300 | 2 | {record['run_final_return']:.0f} | {shown['mode']} | {shown['mean']} | {difference:+d} |"
    assert row in page and "Mean minus mode over 1 run: " in page and "## kept, Pendulum-v1" in page

    # its RL Zoo entry edited since the final state was kept: refused, not read under the new settings
    from benchmarks import zoo

    trained_with = zoo.zoo_settings(job)
    monkeypatch.setattr(zoo, "zoo_settings", lambda edited_job: {**trained_with, "batch_size": "8"})
    final_policies.main(["run", str(suite_path), "--checkpoints", str(checkpoints), "--algos", "mpo", "--episodes", "1"])
    assert f"skipped: {job.name}: no final state of this job in" in capsys.readouterr().err
    monkeypatch.setattr(zoo, "zoo_settings", lambda edited_job: trained_with)
    stale = {key: value for key, value in record.items() if key != "mode_mean_gap"}
    record_path(job, store).write_text(json.dumps(stale))

    calls = []
    monkeypatch.setattr(final_policies, "read_final", lambda *args: calls.append(args[2]) or record)
    final_policies.main(["run", str(suite_path), "--checkpoints", str(checkpoints), "--algos", "mpo"])
    assert calls == [None], "a record without a measure the page shows is read again"
    final_policies.main(["run", str(suite_path), "--checkpoints", str(checkpoints), "--algos", "mpo"])
    assert calls == [None], "a record of the same final state and episodes is not read again"
    final_policies.main(["run", str(suite_path), "--checkpoints", str(checkpoints), "--algos", "mpo", "--episodes", "3"])
    assert calls == [None, 3], "with other episodes it is"
    final_policies.main(["run", str(suite_path), "--checkpoints", str(tmp_path / "none"), "--algos", "mpo"])
    assert "no kept final state of" in capsys.readouterr().err


def test_a_reading_leaves_the_models_deterministic_action_as_it_was():
    model = MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), seed=0)
    env = make_vec_env("Pendulum-v1", seed=3)
    visited = []
    reading = final_policies.evaluate_reading(model, env, "mean", 1, seed=3, visited=visited)
    assert model.actor.deterministic_action == "mode" and reading["lengths"] == [200] and len(visited) == 200
    with pytest.raises(ValueError, match=r"reading='median' is invalid, expected one of \('mode', 'mean', 'sampled'\)"):
        final_policies.evaluate_reading(model, env, "median", 1, seed=3)
    assert [job.eval_seed for job in load_suite("tiny").jobs if job.algo == "mpo"] == [10_000, 10_001]


def test_only_a_gaussian_clipped_into_the_box_is_read_each_way():
    assert unreadable(MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]))) is None
    squashed = MPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8], action_bounding="tanh"))
    assert unreadable(squashed) == "its actor (GaussianActor, action_bounding='tanh') does not clip a Gaussian into the box"
    assert "CategoricalActor, action_bounding=None" in unreadable(MPO("MlpPolicy", "CartPole-v1"))


def test_the_probe_refuses_a_reading_of_no_episodes(capsys):
    with pytest.raises(SystemExit):
        final_policies.main(["run", "tiny", "--episodes", "0"])
    assert "--episodes must be a positive integer, got 0" in capsys.readouterr().err
    job, *_ = load_suite("tiny").jobs
    with pytest.raises(ValueError, match="episodes must be a positive integer, got 0"):
        final_policies.read_final(job, final_policies.RESULTS_DIR / ".checkpoints", episodes=0)
