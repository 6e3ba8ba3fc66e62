"""Stand-ins of outside services that cannot run here, for tests and benches (not in the wheel)."""
