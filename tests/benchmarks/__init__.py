"""Benchmarks: run as ``python -m tests.benchmarks.<name>``; pytest never collects them."""
