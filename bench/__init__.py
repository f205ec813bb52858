"""Benchmarks of kuya-store against raw drivers and a naive ORM loop: ``python -m bench``."""
