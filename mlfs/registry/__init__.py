"""Model and dataset registry: indexing, safe format reading, stages, aliases, lineage."""
