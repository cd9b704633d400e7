"""Inode table built once from a manifest; immutable while mounted."""

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
    def __init__(self, manifest: Manifest) -> None:
        self.nodes: dict[int, Node] = {}
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

    def __getitem__(self, inode: int) -> Node:
        return self.nodes[inode]

    def get(self, inode: int) -> Node | None:
        return self.nodes.get(inode)

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
        node = self._add(Node(len(self.nodes) + 1, name, parent, mode, **kw))
        self.nodes[parent].children[name] = node.inode
        return node
