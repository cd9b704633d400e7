"""Operations tests reuse the FUSE tests' SeaweedFS-backed demo artifact."""

from tests.fuse.conftest import artifact, fuse_ready  # noqa: F401  (fixtures)
