"""Benchmarks (run with ``aem-loop bench`` or the scripts in benchmarks/)."""
