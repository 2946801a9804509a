"""Scoring a model on the manifest's splits and writing the report."""
