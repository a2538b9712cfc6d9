"""Benchmarks and load tests for loragate: `make bench` (loadtests.bench) and a locust scenario."""
