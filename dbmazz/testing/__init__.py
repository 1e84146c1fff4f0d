"""Test tools shipped with dbmazz: a throwaway PostgreSQL cluster and a StarRocks emulator.

They exist for dbmazz's own tests, benchmarks and `make demo`, and for users who want to
test pipelines without real infrastructure. Neither is meant for production.
"""
