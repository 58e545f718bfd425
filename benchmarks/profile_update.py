"""
Where an MPO gradient step spends its time: torch.profiler over ``train()`` on a filled replay buffer, one torch thread.

    python -m benchmarks.profile_update --env HalfCheetah-v5 --updates 100 [--q-target n_step] [--target-precision bfloat16]
        [--layer-norm] [--batch-renorm] [--shapes]

Prints the operators that take the most self CPU time, and the mean wall-clock per update outside the profiler.
"""

import argparse
import time

import torch as th
from torch import nn
from torch.profiler import ProfilerActivity, profile

from sb3_mpo import MPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--q-target", default="retrace", choices=["retrace", "n_step"])
    parser.add_argument("--n-action-samples", type=int, default=20)
    parser.add_argument("--target-precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layer-norm", action="store_true", help="Acme's torso: LayerNorm input block and ELU")
    parser.add_argument("--batch-renorm", action="store_true", help="CrossQ's critic: BatchRenorm, no target critic")
    parser.add_argument("--shapes", action="store_true", help="one row per operator and input shapes")
    parser.add_argument("--rows", type=int, default=25, help="operators shown")
    parser.add_argument("--sort", default="self_cpu_time_total")
    args = parser.parse_args()
    th.set_num_threads(1)

    model = MPO(
        "MlpPolicy",
        args.env,
        q_target=args.q_target,
        n_action_samples=args.n_action_samples,
        target_precision=args.target_precision,
        policy_kwargs={
            **(dict(layer_norm=True, activation_fn=nn.ELU) if args.layer_norm else {}),
            **(dict(batch_renorm=True) if args.batch_renorm else {}),
        },
        seed=0,
    )
    model.learn(2000)  # fill the buffer past learning_starts
    model.train(20, model.batch_size)  # warm the allocator
    start = time.perf_counter()
    model.train(args.updates, model.batch_size)
    per_update = (time.perf_counter() - start) / args.updates
    settings = (
        f"q_target={args.q_target}, N={args.n_action_samples}, target_precision={args.target_precision}, "
        f"layer_norm={args.layer_norm}, batch_renorm={args.batch_renorm}"
    )
    print(f"{args.env}, {settings}: {1e3 * per_update:.2f} ms per update")

    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as profiler:
        model.train(args.updates, model.batch_size)
    print(profiler.key_averages(group_by_input_shape=args.shapes).table(sort_by=args.sort, row_limit=args.rows))


if __name__ == "__main__":
    main()
