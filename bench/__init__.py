"""Benchmarks of routee-callbacks against bare baselines on the same machine (`make bench`)."""
