"""Benchmarks shipped with the library (``memos bench ...``)."""
