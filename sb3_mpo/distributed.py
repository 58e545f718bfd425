"""
Data-parallel MPO on ``torch.distributed``: the paper's chief / worker loop (Abdolmaleki et al. 2018, Sec. 4 and
Appendix: G workers compute gradients on their own data, the chief applies their mean and sends the parameters back),
with an all-reduce in place of the chief.

Every worker (one process, launched by ``torchrun``) owns its environments and its replay buffer, collects its own data
(its seed is the given one plus its rank), and computes the gradients of critic, policy and multipliers on its own
batch; the gradients are averaged over the workers (one all-reduce of all of them per update) before the same
optimiser step, so that every worker holds the same parameters after each update, target networks and optimiser
states included. The temperatures solved by each worker's E-step are averaged too, so every worker weights its samples
with the same η; with value normalisation, PopArt's statistics follow the workers' average moments; with CrossQ's
critic (``batch_renorm``), every BatchRenorm layer normalises with the moments of all the workers' batches together, as
``SyncBatchNorm`` does (:func:`sum_over_workers`), so the workers' running statistics stay identical too (a features
extractor's own ``BatchNorm`` is not synchronised: its running statistics follow each worker's batches). Rank 0 (the
chief) logs, evaluates and saves; every worker can load the saved model and resume. A non-finite loss or gradient on
any worker stops every worker at the same update, and a worker that dies or stops answering makes the others fail
with an error after ``timeout_seconds`` instead of waiting forever.

    torchrun --nproc-per-node 2 -m sb3_mpo.distributed --env Pendulum-v1 --steps 20000

Why ``torch.distributed`` and not ``DistributedDataParallel`` or Ray Train: MPO's update runs several forward passes
of the same networks (online and target critic, online and target actor) before one backward pass over three losses
and three optimisers, and SB3 calls its networks directly; DDP's gradient hooks expect one forward per backward of a
wrapped module. One all-reduce of the flattened gradients after ``backward()`` is exactly what the paper's chief does
and keeps SB3's ``learn()`` loop untouched. Ray Train would launch the same ``torch.distributed`` process group; on a
cluster, ``torchrun``'s rendezvous (``--nnodes``, ``--rdzv-endpoint``) does that without another dependency.

What one update communicates: the gradients of every trained parameter, once, as float32. For the default (256, 256)
networks on HalfCheetah-v5 (17 observations, 6 actions) that is the critic's 72,193 and the actor's 73,484 parameters
and 12 multipliers: 0.58 MB per update and worker, against a compute of about 20 ms per update on one CPU core;
on a 10 Gbit/s network a ring all-reduce of 0.6 MB takes about 1 ms, so the loop scales until the network, not the
update, is the bottleneck.
"""

import contextlib
import io
import os
import pathlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch as th
import torch.distributed as dist
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.type_aliases import GymEnv, TrainFrequencyUnit

from sb3_mpo.common import checks
from sb3_mpo.mpo.mpo import MPO, NonFiniteError, optimized_parameters
from sb3_mpo.mpo.torsos import SharedBatchRenorm

#: Seconds a worker waits for the others in a collective before it fails
DEFAULT_TIMEOUT_SECONDS = 300.0
#: The backends ``torch.distributed`` knows, by name
BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl")
#: The diagnostics computed from the gradients after they were averaged: every worker holds the same
AVERAGED = ("critic_grad_norm", "actor_grad_norm")


class WorkerLostError(RuntimeError):
    """Another worker of data-parallel training died or stopped answering: this one cannot go on alone."""


def init_workers(backend: str = "gloo", timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, **kwargs: Any) -> None:
    """
    Join the process group of the workers, as launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR`` and ``MASTER_PORT``), unless it is already initialised. With NCCL each process takes the GPU of
    its ``LOCAL_RANK`` (``torch.cuda.set_device``), so that the workers of one machine do not share one GPU.

    :param backend: ``"gloo"`` (CPU) or ``"nccl"`` (GPU), or another of :data:`BACKENDS`, or device-backend pairs as
        ``torch.distributed`` takes them (``"cpu:gloo,cuda:nccl"``)
    :param timeout_seconds: How long a collective waits for a worker before it raises, a finite number of seconds above 0
    :param kwargs: More arguments of ``torch.distributed.init_process_group`` (e.g. ``init_method``, ``rank``,
        ``world_size`` outside ``torchrun``)
    :raises ValueError: naming a backend or timeout that is not one of those
    """
    names = [part.split(":")[-1].lower() for part in backend.split(",")] if isinstance(backend, str) else [None]
    if not all(name in BACKENDS for name in names):
        raise ValueError(
            f"init_workers: backend={backend!r} is invalid, expected one of {BACKENDS} or device:backend pairs "
            "(e.g. 'cpu:gloo,cuda:nccl')"
        )
    if not (checks.is_finite_number(timeout_seconds) and timeout_seconds > 0):
        raise ValueError(f"init_workers: timeout_seconds={timeout_seconds!r} is invalid, expected a finite number above 0")
    if dist.is_initialized():
        return
    if "nccl" in names and th.cuda.is_available():
        # torchrun starts one process per GPU: each takes its local rank's, which SB3's device "auto" ("cuda") then is
        th.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds), **kwargs)


@contextlib.contextmanager
def _worker_lost(where: str) -> Iterator[None]:
    """
    Turn the backend's error about a dead or silent worker into a :class:`WorkerLostError` that says where training
    stopped.

    :param where: Where the collective ran, completing "... did not answer within the process group's timeout"
    """
    try:
        yield
    except RuntimeError as error:
        raise WorkerLostError(
            f"DistributedMPO (rank {dist.get_rank()} of {dist.get_world_size()}): another worker died or did not answer "
            f"within the process group's timeout {where}; training stops. The backend said: {error}"
        ) from error


class _SumOverWorkers(th.autograd.Function):
    """The sum of a tensor over the workers; its gradient is the sum of the workers' gradients of it, in turn."""

    @staticmethod
    def forward(ctx: Any, tensor: th.Tensor) -> th.Tensor:
        total = tensor.clone(memory_format=th.contiguous_format)  # all_reduce needs contiguous memory
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: th.Tensor) -> th.Tensor:
        # every worker's loss depends on every worker's part through the sum: d(sum_r L_r)/d part = sum_r dL_r/d total
        grad = grad_total.clone(memory_format=th.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def sum_over_workers(tensor: th.Tensor) -> th.Tensor:
    """
    The sum of a tensor over the workers, differentiable: its backward pass sums the gradients over the workers in turn,
    so that each worker's gradient holds every worker's loss's dependence on its batch, as in ``SyncBatchNorm``.
    CrossQ's critic sums its batch moments with it (two small all-reduces per BatchRenorm layer forward, two backward).
    (``torch.distributed.nn.functional.all_reduce`` does the same and is deprecated in favour of a private module.)

    :param tensor: This worker's part
    :return: The sum over the workers, on every worker
    """
    with _worker_lost("while the critic's batch statistics were summed"):
        return _SumOverWorkers.apply(tensor)


class DistributedMPO(MPO):
    """
    MPO trained by all the processes of an initialised ``torch.distributed`` group (see :func:`init_workers`), each
    with its own environment and replay buffer, their gradients averaged before every update. Takes MPO's arguments;
    ``train_freq`` must count steps (with episodes, workers would update at different times), and ``seed`` is each
    worker's base seed (worker k uses ``seed + k``). Only rank 0 logs; every worker gives its own health warnings.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "DistributedMPO needs an initialised torch.distributed process group: launch the script with torchrun "
                "and call sb3_mpo.distributed.init_workers() before creating the model"
            )
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if self.rank != 0:
            kwargs["verbose"] = 0
        super().__init__(*args, **kwargs)

    @classmethod
    def load(  # type: ignore[override]
        cls,
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> "DistributedMPO":
        """SB3's ``load`` on every worker; a worker other than rank 0 loads the chief's save silently (verbose 0)."""
        if dist.is_initialized() and dist.get_rank() != 0:
            custom_objects = {**(custom_objects or {}), "verbose": 0}
        return super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)

    @property
    def is_chief(self) -> bool:
        """Whether this worker logs, evaluates and saves (rank 0)."""
        return self.rank == 0

    def set_random_seed(self, seed: int | None = None) -> None:
        """Seed this worker with ``seed + rank``: each collects its own data (the networks start from rank 0's)."""
        super().set_random_seed(None if seed is None else seed + self.rank)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "rank", "world_size"]  # a loaded model takes its process's

    def _warn_once(self, kind: str, message: str | None) -> None:
        """Each worker judges its own batches and replay: its health warnings say which worker gives them."""
        super()._warn_once(
            kind, None if message is None else f"DistributedMPO rank {self.rank} of {self.world_size}: {message}"
        )

    def _setup_model(self) -> None:
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()  # a loaded model: this process's
        super()._setup_model()
        # Here, not in the constructor, so that a load (of a saved model, or with custom_objects) is checked too
        if self.train_freq.unit != TrainFrequencyUnit.STEP:  # type: ignore[union-attr]
            raise ValueError(
                f"DistributedMPO: train_freq={self._train_freq_as_given()!r} is invalid, expected a number of steps (an "
                "int or (n, 'step')): workers must update at the same steps"
            )
        if self.rank != 0:
            self.verbose = 0
            self.set_logger(Logger(folder=None, output_formats=[]))
        # Workers initialise their networks from different seeds: all start from rank 0's parameters
        for tensor in [*self.policy.state_dict().values(), *self.multipliers.state_dict().values()]:
            dist.broadcast(tensor, src=0)
        for module in self.policy.modules():
            if isinstance(module, SharedBatchRenorm):
                module.sum_over_workers = sum_over_workers

    def _collective(self) -> contextlib.AbstractContextManager[None]:
        """Turn the backend's error about a dead or silent worker into one that says at which update training stopped."""
        return _worker_lost(f"at gradient update {self._n_updates + 1} (env step {self.num_timesteps})")

    def _backward(self, loss: th.Tensor) -> None:
        with self._collective():  # CrossQ's critic sums its batch moments' gradients over the workers here
            super()._backward(loss)

    def _average_gradients(self, optimizers: list[th.optim.Optimizer]) -> None:
        gradients = [param.grad for param in optimized_parameters(optimizers) if param.grad is not None]
        # whether this worker's own gradients are finite, before the average mixes in the others'
        finite = [gradient.isfinite().all() for gradient in gradients]
        self._local_gradients_finite = th.stack(finite).all() if finite else th.ones((), dtype=th.bool, device=self.device)
        self._average_over_workers(gradients)

    @th.compiler.disable  # with compile_update, the collective runs eagerly between the compiled graphs
    def _average_over_workers(self, tensors: list[th.Tensor]) -> None:
        if not tensors:
            return
        flat = th.cat([tensor.reshape(-1) for tensor in tensors])
        with self._collective():
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    def _raise_if_not_finite(self, quantities: dict[str, th.Tensor]) -> None:
        """
        Stop every worker at the same update where any worker's own losses, diagnostics or gradients (before the
        average, which spreads one worker's NaN to all) are not finite, each saying which workers they were.
        """
        own = [value for key, value in quantities.items() if key not in AVERAGED]
        finite = th.isfinite(th.stack(own)).all() & self._local_gradients_finite
        at_fault = th.zeros(self.world_size, device=finite.device)  # NCCL reduces CUDA tensors only
        at_fault[self.rank] = (~finite).float()
        with self._collective():
            dist.all_reduce(at_fault, op=dist.ReduceOp.SUM)
        ranks = at_fault.nonzero().flatten().tolist()
        if not ranks:
            return
        workers = f"worker{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {self.world_size}"
        if self.rank in ranks:  # its own non-finite values, named
            try:
                super()._raise_if_not_finite(quantities)
            except NonFiniteError as error:
                raise NonFiniteError(f"DistributedMPO rank {self.rank} ({workers} at fault): {error}") from None
        raise NonFiniteError(
            f"DistributedMPO rank {self.rank}: a non-finite loss, gradient or multiplier on {workers} at gradient update "
            f"{self._n_updates + 1}, whose gradients reached this worker's average; nothing of the model was updated on "
            "any worker"
        )


def main() -> None:
    """``torchrun --nproc-per-node G -m sb3_mpo.distributed [--env ...]``: the main job, on G workers."""
    from sb3_mpo.__main__ import build_model, build_parser, train_and_report

    parser = build_parser(
        prog="torchrun --nproc-per-node G -m sb3_mpo.distributed",
        description="Train MPO on G workers with the settings shipped for RL Zoo (sb3_mpo/hyperparams/mpo.yml); "
        "--steps counts each worker's steps, and rank 0 prints the evaluations and saves.",
    )
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"], help="torch.distributed backend")
    parser.add_argument("--timeout-seconds", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="collective timeout")
    args = parser.parse_args()
    init_workers(args.backend, args.timeout_seconds)
    try:
        model = build_model(args, DistributedMPO)
        label = f"MPO ({model.world_size} workers)"
        train_and_report(args, model, chief=model.is_chief, label=label)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
