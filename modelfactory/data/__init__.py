"""Datasets: ingest, row-level validation, content-addressed versions, deterministic splits. Knows nothing of models."""
