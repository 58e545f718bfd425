"""
The benchmark instrument of sb3-mpo, beside the library and not installed with it: suites of runs (MPO beside SB3's
baselines on RL Zoo's settings), a resumable runner (local processes or Ray), one result file per run, rliable reports.
Run from the repository root: ``python -m benchmarks run quick``, ``python -m benchmarks report quick``.

Layering: ``suite`` (what to run) <- ``results`` and ``stamp`` (what a run stored) <- ``report`` (reads files only);
``zoo`` and ``checkpoints`` <- ``training`` (one run, in a worker) <- ``backends`` <- ``cli``. Nothing in ``sb3_mpo``
imports this package.
"""
