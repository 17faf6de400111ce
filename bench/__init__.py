"""Benchmark programs: each writes bench/results/<name>.json; run_all runs them and reports."""
