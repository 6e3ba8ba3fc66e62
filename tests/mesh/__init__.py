"""Mesh tests."""
