"""Who may do what: users with keys and per-bucket read/write rights, and anonymous read.

Credentials come from `MLFS_ROOT_ACCESS_KEY` / `MLFS_ROOT_SECRET_KEY` (the root user:
every right on every bucket) and/or a TOML credentials file:

    [[user]]
    name = "trainer"
    access_key = "AKTRAINER"
    secret_key = "a-long-secret"
    read = ["models", "datasets"]   # bucket names, or "*" for all
    write = ["checkpoints"]
    admin = false                   # may create and delete buckets

    [anonymous]
    read = ["public-models"]        # GET/HEAD/list without credentials
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlfs.errors import ConfigError


@dataclass(frozen=True)
class User:
    name: str
    access_key: str
    secret_key: str
    read: frozenset[str] = frozenset()
    write: frozenset[str] = frozenset()
    admin: bool = False

    def can_read(self, bucket: str) -> bool:
        return self.admin or bool({"*", bucket} & (self.read | self.write))

    def can_write(self, bucket: str) -> bool:
        return self.admin or bool({"*", bucket} & self.write)


@dataclass
class AccessPolicy:
    users: dict[str, User] = field(default_factory=dict)  # by access key
    anonymous_read: frozenset[str] = frozenset()

    def user(self, access_key: str) -> User | None:
        return self.users.get(access_key)


def load_access_policy(
    credentials_file: Path | None,
    env: Mapping[str, str] = os.environ,
    anonymous_read: tuple[str, ...] = (),
) -> AccessPolicy:
    policy = AccessPolicy(anonymous_read=frozenset(anonymous_read))
    root_key, root_secret = env.get("MLFS_ROOT_ACCESS_KEY"), env.get("MLFS_ROOT_SECRET_KEY")
    if bool(root_key) != bool(root_secret):
        raise ConfigError("set both MLFS_ROOT_ACCESS_KEY and MLFS_ROOT_SECRET_KEY, or neither")
    if root_key and root_secret:
        policy.users[root_key] = User("root", root_key, root_secret, admin=True)
    if credentials_file is not None:
        _load_file(credentials_file, policy)
    if not policy.users:
        raise ConfigError(
            "no credentials: set MLFS_ROOT_ACCESS_KEY and MLFS_ROOT_SECRET_KEY or pass --credentials FILE"
        )
    return policy


def _load_file(path: Path, policy: AccessPolicy) -> None:
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"credentials file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"credentials file {path}: {exc}") from None
    for index, entry in enumerate(doc.get("user", [])):
        where = f"credentials file {path}: user #{index + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table")
        try:
            user = User(
                name=str(entry.get("name", entry["access_key"])),
                access_key=_text(entry["access_key"], where, "access_key"),
                secret_key=_text(entry["secret_key"], where, "secret_key"),
                read=_buckets(entry.get("read", []), where, "read"),
                write=_buckets(entry.get("write", []), where, "write"),
                admin=bool(entry.get("admin", False)),
            )
        except KeyError as exc:
            raise ConfigError(f"{where}: missing {exc.args[0]}") from None
        if user.access_key in policy.users:
            raise ConfigError(f"{where}: access key {user.access_key} is defined twice")
        policy.users[user.access_key] = user
    anonymous = doc.get("anonymous", {})
    policy.anonymous_read |= _buckets(anonymous.get("read", []), f"credentials file {path}: [anonymous]", "read")


def _text(value: object, where: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {name} must be a non-empty string")
    return value


def _buckets(value: object, where: str, name: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {name} must be a list of bucket names")
    return frozenset(value)
