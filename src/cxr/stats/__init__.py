"""Metrics and their uncertainty: pure functions over arrays."""
