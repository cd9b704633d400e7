"""pyfuse3 operations: thin translation from FUSE requests to the inode table and reader."""

from __future__ import annotations

import errno
import itertools
import os
import time
from collections import Counter
from typing import Any

import pyfuse3

from mlfs.fuse.errmap import fuse_handler
from mlfs.fuse.inodes import InodeTable, Node
from mlfs.reader import ArtifactReader, OpenFile

# The artifact is immutable while mounted, so the kernel may cache names and attributes
# for as long as it likes; a day is "forever" without risking overflow anywhere.
CACHE_TIMEOUT = 86400.0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


async def _erofs(*_args: Any, **_kw: Any) -> Any:
    raise pyfuse3.FUSEError(errno.EROFS)


class MlfsOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, table: InodeTable, reader: ArtifactReader, uid: int, gid: int) -> None:
        super().__init__()
        self.table = table
        self.reader = reader
        self.uid = uid
        self.gid = gid
        self.mount_time_ns = time.time_ns()
        self._handles: dict[int, OpenFile] = {}
        self._next_fh = itertools.count(1)
        self.on_open: Any = None  # optional hook(entry, OpenFile, pid) for the policy layer
        # Nodes of trees replaced by `mlfs switch`: the kernel may still ask about them
        # (open files, cached inodes) until it forgets them.
        self._retired: dict[int, Node] = {}
        self._bytes_served = 0
        self._served_by_path: Counter[str] = Counter()

    def replace_tree(self, table: InodeTable, reader: ArtifactReader) -> None:
        """Serve a new tree from now on; handles opened before keep their old reader."""
        for inode, node in self.table.nodes.items():
            if inode not in table.nodes:
                self._retired[inode] = node
        self.table = table
        self.reader = reader

    # ---------------------------------------------------------------- helpers
    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.inode
        a.generation = 0
        a.entry_timeout = CACHE_TIMEOUT
        a.attr_timeout = CACHE_TIMEOUT
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_size = node.size
        a.st_blksize = 1 << 20
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.mount_time_ns
        return a

    def _node(self, inode: int) -> Node:
        node = self.table.get(inode) or self._retired.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    # ------------------------------------------------------------- namespace
    @fuse_handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return self._attrs(parent)
        if name == b"..":
            return self._attrs(self._node(parent.parent))
        child = parent.children.get(name)
        if child is None:
            # st_ino 0 = a cacheable negative entry: repeated probes for missing files
            # (Python imports, HF config lookups) stop reaching us.
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = 0
            neg.entry_timeout = CACHE_TIMEOUT
            return neg
        return self._attrs(self.table[child])

    @fuse_handler
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    @fuse_handler
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self._node(inode)
        if node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    @fuse_handler
    async def opendir(self, inode: int, ctx: Any) -> int:
        if not self._node(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @fuse_handler
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        # Positions 0 and 1 are "." and ".."; children follow in name order. Each
        # entry's next_id is its position + 1, so a listing resumes where it stopped.
        node = self._node(fh)
        entries = [(b".", node), (b"..", self._node(node.parent))]
        for pos in range(start_id, len(node.child_order) + 2):
            if pos < 2:
                name, target = entries[pos]
            else:
                target = self.table[node.child_order[pos - 2]]
                name = target.name
            if not pyfuse3.readdir_reply(token, name, self._attrs(target), pos + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    @fuse_handler
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = (self.table.total_size + 4095) // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.table.nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # ------------------------------------------------------------------ files
    @fuse_handler
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.entry is None:
            raise pyfuse3.FUSEError(errno.EISDIR if node.is_dir else errno.EINVAL)
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        handle = self.reader.open(node.entry)
        if self.on_open is not None:
            self.on_open(node.entry, handle, getattr(ctx, "pid", None))
        fh = next(self._next_fh)
        self._handles[fh] = handle
        # keep_cache: the file never changes while mounted, so pages read once stay
        # valid across opens and warm reads never enter this process.
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @fuse_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        # A view of the verified buffer: pyfuse3 replies before anything else runs.
        data = await handle.read_for_reply(off, size)
        self._bytes_served += len(data)
        self._served_by_path[handle.entry.path] += len(data)
        return data

    async def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # A read-only filesystem: every mutating request answers EROFS.
    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _erofs
    create = write = setxattr = removexattr = _erofs

    async def flush(self, fh: int) -> None:
        return None

    def statistics(self) -> dict[str, Any]:
        windows = [h.window for h in self._handles.values()]
        return {
            "open_files": len(self._handles),
            "inodes": len(self.table.nodes),
            "bytes_served": self._bytes_served,
            "read_ahead_window_max": max(windows, default=0),
            "read_ahead_window_total": sum(windows),
            "top_files": self._served_by_path.most_common(10),
        }
