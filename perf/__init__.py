"""Benchmarks: they write JSON and PNG results and never assert."""
