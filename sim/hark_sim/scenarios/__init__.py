"""Scenario files bundled with hark_sim, usable by name: ``--brain script --script kitchen``.

It must not contain code; the TOML files here are package data.
"""
