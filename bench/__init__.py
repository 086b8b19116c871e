"""Benchmarks that print figures; none of them pass or fail on time."""
