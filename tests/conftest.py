"""Shared test configuration: every test runs on loopback only."""
