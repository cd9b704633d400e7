"""mlfs: lazy, verified, read-only mounts of ML artifacts stored in S3."""

__version__ = "0.1.0"
