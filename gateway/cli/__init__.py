"""`sentrail` commands: serve, model, keys, policy, audit."""

from gateway.cli.main import main

__all__ = ["main"]
