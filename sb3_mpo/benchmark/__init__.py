"""Benchmark suites: run MPO beside SB3 baselines with RL Zoo settings, store one file per run, report with rliable."""
