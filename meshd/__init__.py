"""meshd: the agent and the operator CLI of a master-less personal cloud."""

__version__ = "0.1.0"
