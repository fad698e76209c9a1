"""Benchmarks that write BENCHMARKS.md (each owns a marked section of it)."""
