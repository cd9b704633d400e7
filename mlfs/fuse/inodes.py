"""Inode table built once from a manifest; immutable while mounted.

`mlfs switch` builds a new table for the new manifest with `previous=` the old one:
paths whose content is unchanged keep their inode numbers (so the kernel's caches of
them stay valid), and everything else gets numbers never used before in this mount,
so no cached inode number can ever name a different file.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from mlfs.manifest.model import FileEntry, Manifest

ROOT_INODE = 1  # pyfuse3.ROOT_INODE; kept here so this module needs no pyfuse3


@dataclass
class Node:
    inode: int
    name: bytes
    parent: int
    mode: int  # full st_mode including the type bits
    size: int = 0
    entry: FileEntry | None = None
    target: bytes | None = None  # symlinks
    children: dict[bytes, int] = field(default_factory=dict)  # directories
    child_order: list[int] = field(default_factory=list)
    nlink: int = 1  # directories: 2 + subdirectories, set once the tree is complete

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class InodeTable:
    def __init__(self, manifest: Manifest, previous: InodeTable | None = None) -> None:
        self.nodes: dict[int, Node] = {}
        self.next_inode = previous.next_inode if previous is not None else ROOT_INODE + 1
        self._previous = previous.by_path() if previous is not None else {}
        self._path: dict[int, str] = {ROOT_INODE: ""}
        self._add(Node(ROOT_INODE, b"", ROOT_INODE, stat.S_IFDIR | 0o555))
        for entry in manifest.files:
            parent = self._make_dirs(entry.path)
            # A manifest is untrusted: write bits never appear on a read-only mount, and
            # setuid/setgid/sticky bits are stripped (mounts are nosuid too, see session).
            mode = stat.S_IFREG | (entry.mode & 0o555)
            self._add_child(parent, entry.path, mode, size=entry.size, entry=entry)
        for link in manifest.symlinks:
            parent = self._make_dirs(link.path)
            target = link.target.encode()
            self._add_child(parent, link.path, stat.S_IFLNK | 0o777, size=len(target), target=target)
        for node in self.nodes.values():
            if node.is_dir:
                node.child_order = sorted(node.children.values(), key=lambda i: self.nodes[i].name)
                node.nlink = 2 + sum(1 for c in node.children.values() if self.nodes[c].is_dir)
        self.total_size = manifest.total_size
        self._previous = {}
        self._path = {}

    def __getitem__(self, inode: int) -> Node:
        return self.nodes[inode]

    def get(self, inode: int) -> Node | None:
        return self.nodes.get(inode)

    def by_path(self) -> dict[str, Node]:
        """Every node by its path ("" is the root)."""
        out: dict[str, Node] = {}
        stack = [(ROOT_INODE, "")]
        while stack:
            inode, path = stack.pop()
            node = self.nodes[inode]
            out[path] = node
            for name, child in node.children.items():
                stack.append((child, f"{path}/{name.decode()}" if path else name.decode()))
        return out

    def changes_since(self, old: InodeTable) -> tuple[list[tuple[int, bytes]], list[int]]:
        """What the kernel may cache wrongly after replacing `old` by this table:
        (parent inode, name) entries that now name something else or nothing (or
        something where nothing was), and directories whose attributes changed."""
        entries: list[tuple[int, bytes]] = []
        dirs: list[int] = []
        for inode, node in old.nodes.items():
            new = self.nodes.get(inode)
            if not node.is_dir or new is None or not new.is_dir:
                continue
            names = node.children.keys() | new.children.keys()
            changed = sorted(n for n in names if node.children.get(n) != new.children.get(n))
            entries.extend((inode, name) for name in changed)
            if changed or node.nlink != new.nlink:
                dirs.append(inode)
        return entries, dirs

    def _inode_for(self, path: str, mode: int, size: int, entry: FileEntry | None,
                   target: bytes | None) -> int:
        old = self._previous.get(path)
        if old is not None and old.mode == mode and old.size == size and old.target == target and (
                entry is None or (old.entry is not None and old.entry.sha256 == entry.sha256
                                  and old.entry.chunks == entry.chunks)):
            return old.inode
        inode = self.next_inode
        self.next_inode += 1
        return inode

    def _add(self, node: Node) -> Node:
        self.nodes[node.inode] = node
        return node

    def _make_dirs(self, path: str) -> int:
        parent = ROOT_INODE
        for part in path.split("/")[:-1]:
            name = part.encode()
            child = self.nodes[parent].children.get(name)
            if child is None:
                child = self._add_child(parent, None, stat.S_IFDIR | 0o555, name=name).inode
            parent = child
        return parent

    def _add_child(self, parent: int, path: str | None, mode: int, name: bytes | None = None, **kw) -> Node:
        if name is None:
            name = path.rsplit("/", 1)[-1].encode()
        parent_path = self._path[parent]
        full = f"{parent_path}/{name.decode()}" if parent_path else name.decode()
        inode = self._inode_for(full, mode, kw.get("size", 0), kw.get("entry"), kw.get("target"))
        node = self._add(Node(inode, name, parent, mode, **kw))
        self._path[inode] = full
        self.nodes[parent].children[name] = node.inode
        return node
