"""The data stages: adapters, generation, ingest, validation, versioning, and reading a version."""
