"""Fixtures shared by several test modules."""

pytest_plugins = ["tests.support.docker", "tests.support.reconciling"]
