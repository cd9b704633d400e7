"""`mount.fuse.mlfs`: the helper mount(8) runs for `mount -t fuse.mlfs` and fstab lines.

    mount -t fuse.mlfs /etc/mlfs/tiny.json /mnt/model -o cache=/var/cache/mlfs,allow_other
    /etc/mlfs/tiny.json  /mnt/model  fuse.mlfs  cache=/var/cache/mlfs,allow_other,_netdev  0 0

mount(8) calls `mount.fuse.mlfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`; this becomes
`mlfs mount SOURCE MOUNTPOINT -o OPTIONS` (a daemon; `umount MOUNTPOINT` ends it).
Options meant for mount(8) itself or for fstab processing are dropped here.
"""

from __future__ import annotations

import sys

# mount(8) adds "rw" unless told "ro"; an mlfs mount is read-only whatever it says.
# The others are read by mount(8), systemd or the fstab machinery, not by filesystems.
_FOR_MOUNT_ITSELF = {"rw", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users",
                     "nouser", "owner", "group"}


def translate(argv: list[str]) -> list[str] | None:
    """mount(8) helper arguments → `mlfs` arguments (None: nothing to do, e.g. -f)."""
    positional: list[str] = []
    options: list[str] = []
    fake = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-o" and i + 1 < len(argv):
            options += argv[i + 1].split(",")
            i += 2
            continue
        if arg.startswith("-o") and len(arg) > 2:
            options += arg[2:].split(",")
        elif arg.startswith("-") and len(arg) > 1:
            fake = fake or "f" in arg[1:]  # -s sloppy, -n no mtab, -v verbose: nothing to do
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 2:
        raise SystemExit("usage: mount.fuse.mlfs MANIFEST MOUNTPOINT [-o OPTIONS]")
    if fake:
        return None
    kept = [o for o in options if o and o not in _FOR_MOUNT_ITSELF
            and not o.startswith(("x-", "comment="))]
    out = ["mount", positional[0], positional[1]]
    if kept:
        out += ["-o", ",".join(kept)]
    return out


def main() -> None:
    from mlfs.cli import main as mlfs_main

    args = translate(sys.argv[1:])
    if args is None:
        sys.exit(0)
    mlfs_main(args, prog_name="mlfs")
