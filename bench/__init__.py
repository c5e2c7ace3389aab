"""Benchmarks: `make bench`. Each module in this package has `run(table)` adding rows.

A row is a workload beside its raw limit measured in the same run (a bulk INSERT, an indexed
COUNT, a do-nothing authenticated endpoint), so the ratio means something on a noisy machine.
"""
