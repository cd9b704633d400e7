"""Domain errors.

Every error a user can cause derives from `MlfsError` and carries a one-line message
that names what was wrong; the CLI prints that line and exits non-zero. Errors that
reach a FUSE handler are mapped to an errno in exactly one place (`mlfs.fuse.errmap`),
so each class states the errno it stands for.
"""

from __future__ import annotations

import errno


class MlfsError(Exception):
    """Base of all mlfs errors; `str()` is a complete one-line message."""

    errno: int = errno.EIO


class ConfigError(MlfsError):
    """A flag, option or environment setting is invalid."""

    errno = errno.EINVAL


class ManifestError(MlfsError):
    """A manifest is malformed or unsafe; the message names the entry."""

    errno = errno.EINVAL


class NotFound(MlfsError):
    errno = errno.ENOENT


class FetchError(MlfsError):
    """Bytes could not be obtained from the object store (after retries)."""

    errno = errno.EIO


class ChunkIntegrityError(FetchError):
    """Fetched or cached bytes do not match the manifest's SHA-256."""

    errno = errno.EIO


class ObjectChanged(FetchError):
    """The object in S3 is no longer the one the manifest describes (ETag mismatch)."""

    errno = errno.ESTALE


class StoreError(MlfsError):
    """The local chunk store cannot hold or serve a chunk."""

    errno = errno.EIO


class MountError(MlfsError):
    """The filesystem could not be mounted or unmounted."""

    errno = errno.EIO
