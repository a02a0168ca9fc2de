"""Benchmarks that write JSON (machine, commit, settings, results), a PNG plot and a markdown table."""
