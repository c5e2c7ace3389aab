"""`make bench` with no arguments runs every benchmark: each name it offers is a module with run(table)."""

import importlib


def test_every_benchmark_offered_can_run(db):
    from bench.__main__ import available_benchmarks

    names = available_benchmarks()
    assert names and "__main__" not in names and "table" not in names
    for name in names:
        assert callable(importlib.import_module(f"bench.{name}").run), name
