"""Benchmark harness: pgbench against direct PostgreSQL, pgbouncer and the gateway.

Run ``python -m benchmarks.run --help``; see benchmarks/README.md.
"""
