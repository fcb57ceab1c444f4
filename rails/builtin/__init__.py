"""Deterministic rails that need no model downloads."""
