"""Data-parallel MPO on torch.distributed (gloo): two CPU worker processes on Pendulum-v1."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch as th

from sb3_mpo import MPO

#: What each worker runs: a tiny MPO, trained, checked and resumed; its rank and world come from the environment, as
#: torchrun would set them
WORKER = r"""
import hashlib, json, os, sys, time
from pathlib import Path

import gymnasium as gym
import torch as th

from sb3_mpo.distributed import DistributedMPO, init_workers, sum_over_workers
from sb3_mpo.mpo.torsos import SharedBatchRenorm

out, mode, variant = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
th.set_num_threads(1)
init_workers(timeout_seconds=10 if mode == "hang" else 60)
rank = int(os.environ["RANK"])
kwargs = dict(learning_starts=40, batch_size=32, n_action_samples=4, seed=0, value_normalization=variant == "popart",
              policy_kwargs=dict(net_arch=[16], batch_renorm=variant == "batch_renorm"))


def fingerprint(model):
    tensors = {**model.policy.state_dict(), **{f"multipliers.{k}": v for k, v in model.multipliers.state_dict().items()}}
    if model.value_normalizer is not None:
        tensors.update({f"popart.{k}": v for k, v in model.value_normalizer.state_dict().items()})
    for name, optimizer in (("actor", model.actor.optimizer), ("critic", model.critic.optimizer)):
        for index, state in optimizer.state_dict()["state"].items():
            tensors[f"{name}.adam.{index}"] = state["exp_avg"]
    return {name: hashlib.sha256(tensor.detach().numpy().tobytes()).hexdigest() for name, tensor in sorted(tensors.items())}


if mode == "train":
    model = DistributedMPO("MlpPolicy", "Pendulum-v1", **kwargs)
    calls = []
    average = model._average_over_workers

    def recorded(tensors):
        before = [tensor.clone() for tensor in tensors]
        average(tensors)
        if len(calls) < 4:
            calls.append((before, [tensor.clone() for tensor in tensors]))

    model._average_over_workers = recorded
    model.learn(120)
    th.save(calls, out / f"calls{rank}.pt")
    temperature = model.multipliers.temperature.item()
    result = {"trained": fingerprint(model), "n_updates": model._n_updates, "temperature": temperature}
    if model.is_chief:
        model.save(out / "model")
    th.distributed.barrier()
    # saved with verbose=1: a worker other than the chief loads it silently
    resumed = DistributedMPO.load(out / "model", env=gym.make("Pendulum-v1"), custom_objects={"verbose": 1})
    resumed.learn(60, reset_num_timesteps=False)
    result.update(resumed=fingerprint(resumed), resumed_updates=resumed._n_updates, resumed_verbose=resumed.verbose)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    # Leave together: a process that exits while its peer's gloo connections are still open may abort at exit
    th.distributed.barrier()
    th.distributed.destroy_process_group()
elif mode == "moments":  # CrossQ's critic's batch moments over both workers' batches, and their gradient
    layer = SharedBatchRenorm(3)
    layer.sum_over_workers = sum_over_workers
    x = th.randn(5 + rank, 3, generator=th.Generator().manual_seed(rank), dtype=th.float64, requires_grad=True)
    mean, var = layer.batch_moments(x)
    (mean * (rank + 1) + var.square() * (rank + 2)).sum().backward()  # each worker's own loss of the shared moments
    moments = {"mean": mean.tolist(), "var": var.tolist(), "grad": x.grad.tolist()}
    (out / f"moments{rank}.json").write_text(json.dumps(moments))
    th.distributed.destroy_process_group()
elif mode == "nan":  # rank 1's critic loss turns NaN at its third update: every worker stops there, naming rank 1
    model = DistributedMPO("MlpPolicy", "Pendulum-v1", **kwargs)
    losses = model._compute_losses

    def poisoned(data):
        critic_loss, *others = losses(data)
        return (critic_loss * float("nan") if rank == 1 and model._n_updates == 2 else critic_loss), *others

    model._compute_losses = poisoned
    try:
        model.learn(120)
        report = {"error": None}
    except Exception as error:
        report = {"error": type(error).__name__, "message": str(error), "n_updates": model._n_updates}
    (out / f"nan{rank}.json").write_text(json.dumps(report))
    th.distributed.barrier()
    th.distributed.destroy_process_group()
else:  # one worker dies (before its first update, or between its first forward and backward passes), or hangs
    model = DistributedMPO("MlpPolicy", "Pendulum-v1", **{**kwargs, "learning_starts": 5})
    if rank == 1 and mode == "kill":
        os._exit(3)
    if rank == 1 and mode == "kill_backward":
        model._backward = lambda loss: os._exit(3)
    if rank == 1 and mode == "hang":
        time.sleep(15)  # longer than the group's 10 s timeout
        os._exit(4)
    start = time.perf_counter()
    try:
        model.learn(100)
        (out / "survivor.json").write_text(json.dumps({"error": None}))
    except Exception as error:
        report = {"error": type(error).__name__, "message": str(error), "seconds": time.perf_counter() - start}
        (out / "survivor.json").write_text(json.dumps(report))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_workers(tmp_path: Path, mode: str, variant: str = "plain", timeout: float = 240) -> list[subprocess.CompletedProcess]:
    """Start two worker processes as torchrun would (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and wait for both."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    processes = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        command = [sys.executable, str(script), str(tmp_path), mode, variant]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + timeout
    results = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail(f"the workers hung for {timeout} s")
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


@pytest.fixture(scope="module", params=["plain", "popart", "batch_renorm"])
def trained(request, tmp_path_factory):
    """Two workers trained, then resumed from the chief's save: the defaults, PopArt's value normalisation, CrossQ's critic."""
    folder = tmp_path_factory.mktemp("distributed")
    for result in run_workers(folder, "train", request.param):
        assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_workers_hold_identical_parameters_multipliers_and_optimiser_states(trained):
    ranks = [json.loads((trained / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0]["n_updates"] == ranks[1]["n_updates"] > 0
    assert ranks[0]["trained"] == ranks[1]["trained"]  # every tensor's bytes (SHA-256): bit-identical updates
    assert ranks[0]["temperature"] == ranks[1]["temperature"]


def test_the_averaged_gradient_is_the_mean_of_the_workers_gradients(trained):
    calls = [th.load(trained / f"calls{rank}.pt") for rank in range(2)]
    assert len(calls[0]) == len(calls[1]) == 4  # the first update's temperatures and gradients, then the second's
    for (before0, after0), (before1, after1) in zip(calls[0], calls[1], strict=True):
        for local0, local1, mean0, mean1 in zip(before0, before1, after0, after1, strict=True):
            assert th.equal(mean0, mean1)
            th.testing.assert_close(mean0, (local0 + local1) / 2)
        # The workers' own gradients differ (their own data): the average is not a copy of either
        assert any(not th.equal(local0, local1) for local0, local1 in zip(before0, before1, strict=True))


def test_the_chiefs_save_loads_anywhere_and_resumes_on_every_worker(trained):
    ranks = [json.loads((trained / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0]["resumed"] == ranks[1]["resumed"] and ranks[0]["resumed"] != ranks[0]["trained"]
    assert ranks[0]["resumed_updates"] > ranks[0]["n_updates"]
    assert (ranks[0]["resumed_verbose"], ranks[1]["resumed_verbose"]) == (1, 0)  # only the chief speaks
    model = MPO.load(trained / "model")  # a single process reads the chief's file as a plain MPO
    assert model._n_updates == ranks[0]["n_updates"]


def test_crossqs_critic_normalises_with_the_moments_of_every_workers_batch_and_their_gradient(tmp_path):
    """Each worker's moments are those of both batches together; each one's gradient is that of the sum of both losses."""
    for result in run_workers(tmp_path, "moments", timeout=120):
        assert result.returncode == 0, result.stderr[-3000:]
    workers = [json.loads((tmp_path / f"moments{rank}.json").read_text()) for rank in range(2)]
    batches = [th.randn(5 + rank, 3, generator=th.Generator().manual_seed(rank), dtype=th.float64) for rank in range(2)]
    together = th.cat(batches).requires_grad_()
    mean, var = together.mean(dim=0), together.var(dim=0)  # torch's own unbiased variance, in one pass
    sum(((mean * (rank + 1) + var.square() * (rank + 2)).sum() for rank in range(2)), th.zeros(())).backward()
    gradients = together.grad.split([5, 6])
    for rank, worker in enumerate(workers):
        th.testing.assert_close(th.tensor(worker["mean"], dtype=th.float64), mean.detach())
        th.testing.assert_close(th.tensor(worker["var"], dtype=th.float64), var.detach())
        th.testing.assert_close(th.tensor(worker["grad"], dtype=th.float64), gradients[rank])


@pytest.mark.parametrize(
    "mode, code, variant",
    [("kill", 3, "plain"), ("hang", 4, "plain"), ("kill", 3, "batch_renorm"), ("kill_backward", 3, "batch_renorm")],
)
def test_a_dead_or_silent_worker_makes_the_others_fail_instead_of_hanging(tmp_path, mode, code, variant):
    """A dead worker's peers fail at once, a silent one's after the group's timeout (10 s here), with a clear error."""
    _, lost = run_workers(tmp_path, mode, variant, timeout=120)
    assert lost.returncode == code
    report = json.loads((tmp_path / "survivor.json").read_text())
    assert report["error"] == "WorkerLostError", "the survivor trained on alone"
    assert "another worker died or did not answer" in report["message"]
    # CrossQ's critic meets a worker lost before the update first in its batch statistics, in the forward pass; one
    # lost after its forward pass, in the backward pass, which sums their gradients
    forward = variant == "batch_renorm" and mode == "kill"
    where = "while the critic's batch statistics were summed" if forward else "gradient update 1 "
    assert where in report["message"], report["message"]
    assert report["seconds"] < (5 if mode == "kill" else 40)


def test_a_non_finite_loss_on_one_worker_stops_every_worker_at_that_update_naming_it(tmp_path):
    """Rank 1's NaN critic loss reaches rank 0 through the averaged gradients: rank 0 names rank 1, not itself."""
    for result in run_workers(tmp_path, "nan", timeout=120):
        assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"nan{rank}.json").read_text()) for rank in range(2)]
    assert [report["error"] for report in reports] == ["NonFiniteError"] * 2
    assert reports[0]["n_updates"] == reports[1]["n_updates"] == 2  # the third update applied nowhere
    assert reports[0]["message"].startswith("DistributedMPO rank 0: a non-finite loss, gradient or multiplier on worker 1 of")
    assert "critic_loss=nan" not in reports[0]["message"]
    assert reports[1]["message"].startswith("DistributedMPO rank 1 (worker 1 of 2 at fault): MPO: non-finite critic_loss=nan")


@pytest.mark.parametrize(
    "backend, timeout_seconds, match",
    [
        ("glo", 10.0, r"backend='glo' is invalid, expected one of \('gloo'"),
        ("cpu:gloo,cuda:nccI", 10.0, r"backend='cpu:gloo,cuda:nccI' is invalid"),
        ("gloo", 0, r"timeout_seconds=0 is invalid, expected a finite number above 0"),
        ("gloo", -5.0, r"timeout_seconds=-5\.0 is invalid"),
        ("gloo", float("nan"), r"timeout_seconds=nan is invalid"),
        ("gloo", float("inf"), r"timeout_seconds=inf is invalid"),
        ("gloo", True, r"timeout_seconds=True is invalid"),
    ],
)
def test_init_workers_names_a_bad_backend_or_timeout(backend, timeout_seconds, match):
    from sb3_mpo.distributed import init_workers

    with pytest.raises(ValueError, match=match):
        init_workers(backend, timeout_seconds)


def test_distributed_mpo_refuses_to_start_outside_a_process_group():
    from sb3_mpo.distributed import DistributedMPO

    with pytest.raises(RuntimeError, match=r"needs an initialised torch\.distributed process group"):
        DistributedMPO("MlpPolicy", "Pendulum-v1")


@pytest.mark.parametrize(
    "train_freq, match",
    [
        ((4, "episode"), r"DistributedMPO: train_freq=\(4, 'episode'\) is invalid, expected a number of steps"),
        ((4,), r"MPO: train_freq=\(4,\) is invalid"),  # malformed: MPO's own check names it
    ],
)
def test_distributed_mpo_refuses_a_train_freq_in_episodes_or_malformed(train_freq, match, tmp_path):
    import torch.distributed as dist

    from sb3_mpo.distributed import DistributedMPO

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match=match):
            DistributedMPO("MlpPolicy", "Pendulum-v1", train_freq=train_freq)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("saved, custom_objects", [((1, "episode"), None), (1, {"train_freq": (1, "episode")})])
def test_distributed_mpo_refuses_a_train_freq_in_episodes_at_load(saved, custom_objects, tmp_path):
    """A saved model, or custom_objects, with train_freq in episodes is refused by the load as by the constructor."""
    import torch.distributed as dist

    from sb3_mpo.distributed import DistributedMPO

    MPO("MlpPolicy", "CartPole-v1", train_freq=saved, gradient_steps=-1, learning_starts=10).save(tmp_path / "model")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match=r"DistributedMPO: train_freq=\(1, 'episode'\) is invalid, expected a number"):
            DistributedMPO.load(tmp_path / "model", env=gym.make("CartPole-v1"), custom_objects=custom_objects)
    finally:
        dist.destroy_process_group()


def test_each_workers_health_warning_names_its_rank(tmp_path, monkeypatch):
    """A trust region of 1e-9 that no multiplier holds, judged every 2 updates, in a group of one worker."""
    import warnings

    import torch.distributed as dist

    from sb3_mpo import MPO
    from sb3_mpo.distributed import DistributedMPO

    monkeypatch.setattr(MPO, "health_check_interval", 2)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = DistributedMPO("MlpPolicy", "Pendulum-v1", seed=0, learning_starts=10_000, batch_size=32, epsilon_mean=1e-9)
        model.learn(200)
        model.train(2, model.batch_size)  # the first interval, not judged
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.train(2, model.batch_size)
    finally:
        dist.destroy_process_group()
    (message,) = [str(warning.message) for warning in caught if "epsilon_mean=1e-09" in str(warning.message)]
    assert message.startswith("DistributedMPO rank 0 of 1: MPO: the M-step's KL")


def test_init_workers_gives_each_nccl_worker_the_gpu_of_its_local_rank(monkeypatch):
    """torchrun's LOCAL_RANK picks the GPU (set_device) before the group is joined; gloo leaves the devices alone."""
    import torch.distributed as dist

    from sb3_mpo import distributed

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(("init", kwargs["backend"])))
    monkeypatch.setattr(th.cuda, "is_available", lambda: True)
    monkeypatch.setattr(th.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setenv("LOCAL_RANK", "3")
    distributed.init_workers("nccl")
    distributed.init_workers("cpu:gloo,cuda:nccl")
    distributed.init_workers("GLOO")  # torch takes backends' names in any case
    assert calls == [("set_device", 3), ("init", "nccl"), ("set_device", 3), ("init", "cpu:gloo,cuda:nccl"), ("init", "GLOO")]
