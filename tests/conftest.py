"""Fixtures shared by several test modules."""

pytest_plugins = ["tests.support.docker", "tests.support.jetstream", "tests.support.reconciling"]
