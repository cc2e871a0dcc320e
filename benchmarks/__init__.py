"""Benchmarks of Mia (run with `make bench`)."""
