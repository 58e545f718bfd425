"""
Train MPO with the settings shipped for RL Zoo, printing an evaluation every few thousand steps, then the final
evaluated return: ``python -m sb3_mpo [--env Pendulum-v1] [--steps 20000]``.
"""

import argparse
import time
from typing import TypeVar

from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_mpo import MPO
from sb3_mpo.common.checks import positive_int_argument
from sb3_mpo.common.hyperparams import environment_settings, load_entry, zoo_entry_to_kwargs
from sb3_mpo.common.threads import set_torch_threads

SelfMPO = TypeVar("SelfMPO", bound=MPO)

#: What a score means, for the environments a first run is likely to use
REFERENCE_SCORES = {
    "Pendulum-v1": "a random policy scores about -1200; -200 or above is solved (RL Zoo's SAC: -157 at 20k steps)",
    "CartPole-v1": "a random policy scores about 20; 500 is the maximum",
    "MountainCarContinuous-v0": "above 90 reaches the goal; 0 or just below is a policy that learned to stand still",
}


class PrintEvaluation(BaseCallback):
    """Print the step, the elapsed time and the mean return after each evaluation of its parent ``EvalCallback``."""

    def __init__(self) -> None:
        super().__init__()
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        assert isinstance(self.parent, EvalCallback)
        minutes, seconds = divmod(int(time.perf_counter() - self.start), 60)
        print(
            f"{self.num_timesteps:>8} steps  {minutes:d}:{seconds:02d}  evaluation return {self.parent.last_mean_reward:8.1f}",
            flush=True,
        )
        return True


def build_parser(prog: str = "python -m sb3_mpo", description: str | None = None) -> argparse.ArgumentParser:
    """The command line of the main job (also that of :mod:`sb3_mpo.distributed`, with its own options added)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description
        or "Train MPO with the settings shipped for RL Zoo (sb3_mpo/hyperparams/mpo.yml) and print evaluations.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--env", default="Pendulum-v1", help="Gymnasium environment id (Box or Discrete actions)")
    parser.add_argument(
        "--steps",
        type=positive_int_argument,
        default=None,
        help="environment steps of training; unset, the entry's n_timesteps",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-freq", type=positive_int_argument, default=2_000, help="steps between progress evaluations")
    parser.add_argument(
        "--eval-episodes", type=positive_int_argument, default=10, help="deterministic episodes of the final evaluation"
    )
    parser.add_argument("--save", default=None, help="where to save the trained model (.zip)")
    parser.add_argument("-v", "--verbose", type=int, default=0)
    return parser


def build_model(args: argparse.Namespace, algo_class: type[SelfMPO] = MPO) -> SelfMPO:  # type: ignore[assignment]
    """
    The model of the parsed command line, with the entry of the shipped RL Zoo file for ``args.env`` (see
    :func:`~sb3_mpo.common.hyperparams.load_entry`); ``args.steps`` left unset becomes the entry's ``n_timesteps``.
    Sets the torch threads first (:func:`~sb3_mpo.common.threads.set_torch_threads`).

    :param args: The parsed command line of :func:`build_parser`, completed in place
    :param algo_class: MPO, or a subclass such as :class:`~sb3_mpo.distributed.DistributedMPO`
    :return: The model, not yet trained
    """
    set_torch_threads()
    entry = load_entry(args.env)
    around = environment_settings(entry)
    if around:
        raise ValueError(
            f"env={args.env!r}: its entry in sb3_mpo/hyperparams/mpo.yml sets {around}, which this job's plain "
            f"environment does not apply; train it through RL Zoo: python -m sb3_mpo.zoo train --algo mpo --env {args.env}"
        )
    if args.steps is None:
        args.steps = int(entry["n_timesteps"])
    policy = entry.get("policy", "MlpPolicy")
    return algo_class(policy, args.env, seed=args.seed, verbose=args.verbose, **zoo_entry_to_kwargs(entry))


def train_and_report(args: argparse.Namespace, model: MPO, chief: bool = True, label: str = "MPO") -> None:
    """
    Train ``model`` for ``args.steps`` steps; the chief prints an evaluation every ``args.eval_freq`` steps, the final
    evaluation and what the score means, and saves the model where ``args.save`` says.

    :param args: The parsed command line of :func:`build_parser`
    :param model: The model to train
    :param chief: Whether this process reports and saves (the only process, or rank 0 of data-parallel training)
    :param label: How the lines name the run
    """
    if not chief:  # another worker of data-parallel training: it trains, rank 0 evaluates
        model.learn(args.steps)
        return
    eval_env = make_vec_env(args.env, n_envs=1, seed=args.seed + 10_000)
    progress = EvalCallback(
        eval_env, eval_freq=args.eval_freq, n_eval_episodes=5, callback_after_eval=PrintEvaluation(), verbose=0
    )
    every = f"every {args.eval_freq} steps, the mean return of 5 evaluation episodes"
    print(f"{label} on {args.env}, {args.steps} steps; {every}:")
    model.learn(args.steps, callback=progress)
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
    print(
        f"{label} on {args.env} after {args.steps} steps (seed {args.seed}): mean return {mean:.1f} +/- {std:.1f} over "
        f"{args.eval_episodes} deterministic evaluation episodes"
    )
    if args.env in REFERENCE_SCORES:
        print(f"For {args.env}, {REFERENCE_SCORES[args.env]}.")
    if args.save:
        model.save(args.save)


def main() -> None:
    args = build_parser().parse_args()
    train_and_report(args, build_model(args))


if __name__ == "__main__":
    main()
