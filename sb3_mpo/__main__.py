"""
Train MPO on a small task and print its evaluated return: ``python -m sb3_mpo [--env Pendulum-v1] [--steps 20000]``.
"""

import argparse

import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_mpo import MPO
from sb3_mpo.common.hyperparams import load_hyperparams


def main() -> None:
    parser = argparse.ArgumentParser(description="Train MPO and print the mean evaluation return.")
    parser.add_argument("--env", default="Pendulum-v1", help="Gymnasium environment id (continuous actions)")
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--save", default=None, help="where to save the trained model (.zip)")
    parser.add_argument("-v", "--verbose", type=int, default=0)
    parser.add_argument("--progress-bar", action="store_true", help="show a progress bar (needs tqdm and rich)")
    args = parser.parse_args()

    th.set_num_threads(1)  # small networks: one thread is fastest on CPU
    # The tuned settings shipped for RL Zoo (sb3_mpo/hyperparams/mpo.yml), or its default block
    model = MPO("MlpPolicy", args.env, seed=args.seed, verbose=args.verbose, **load_hyperparams(args.env))
    model.learn(args.steps, progress_bar=args.progress_bar)
    eval_env = make_vec_env(args.env, n_envs=1, seed=args.seed + 10_000)
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    print(f"MPO on {args.env} after {args.steps} steps (seed {args.seed}): mean evaluation return {mean:.1f} +/- {std:.1f}")
    if args.save:
        model.save(args.save)


if __name__ == "__main__":
    main()
