"""The one place where domain errors become errnos.

In pyfuse3 any exception other than FUSEError escaping a handler tears the whole mount
down, so every handler is wrapped: known errors map to their errno, anything else is
logged with context and answered with EIO while the mount keeps serving.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import pyfuse3

from mlfs.errors import MlfsError

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def fuse_handler(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except MlfsError as exc:
            log.error("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("%s%r failed unexpectedly", fn.__name__, args[1:])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper
