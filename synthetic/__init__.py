"""Synthetic media made in-process (PyAV), for tests, benchmarks and the demo. Nothing is downloaded."""
