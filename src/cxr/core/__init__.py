"""Shared plumbing with no knowledge of the dataset: errors, atomic writes, hashing, privacy masks,
progress output and the data root."""
