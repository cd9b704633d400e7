"""Files written from page-aligned buffers with O_DIRECT, and the fallback where a file
system refuses it."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest

from mlfs.store.direct_io import ALIGN, DirectWriter

SIZES = [0, 1, ALIGN - 1, ALIGN, 3 * ALIGN + 17, (1 << 20) + 5]


def _aligned(data: bytes) -> memoryview:
    buf = mmap.mmap(-1, max(len(data), 1))
    buf[:len(data)] = data
    return memoryview(buf)[:len(data)]


@pytest.mark.parametrize("size", SIZES)
def test_direct_write_holds_every_byte(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    writer = DirectWriter()
    os.close(writer.create(tmp_path / "f", _aligned(data), aligned=True))
    assert (tmp_path / "f").read_bytes() == data, f"a {size}-byte file written with O_DIRECT must read back whole"
    assert writer.enabled, "the test's file system takes O_DIRECT, so the writer must keep using it"


def test_file_system_refusing_o_direct_gets_ordinary_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Which file systems refuse O_DIRECT depends on the kernel (tmpfs takes it since 6.6),
    # so the refusal is simulated the way such a file system answers: EINVAL at open.
    real_open = os.open

    def refusing_open(path, flags, *args):  # type: ignore[no-untyped-def]
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    data = os.urandom(3 * ALIGN + 5)
    writer = DirectWriter()
    os.close(writer.create(tmp_path / "a", _aligned(data), aligned=True))
    assert (tmp_path / "a").read_bytes() == data, "the fallback write must hold every byte"
    assert not writer.enabled, "after a refusal the writer must stop trying O_DIRECT"


def test_unaligned_buffers_are_written_through_the_page_cache(tmp_path: Path) -> None:
    data = os.urandom(2 * ALIGN)
    os.close(DirectWriter().create(tmp_path / "f", memoryview(b"x" + data)[1:], aligned=False))
    assert (tmp_path / "f").read_bytes() == data, "an unaligned buffer must still be written whole"


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        DirectWriter().create(tmp_path / "f", _aligned(b"new"), aligned=True)
    assert (tmp_path / "f").read_bytes() == b"old", "create must not touch an existing file"


def test_two_step_write_finishes_what_another_thread_began(tmp_path: Path) -> None:
    import threading

    data = os.urandom(5 * ALIGN + 123)
    pending = DirectWriter().begin(tmp_path / "f", _aligned(data), aligned=True)
    helper = threading.Thread(target=pending.bulk)
    helper.start()
    helper.join(10)
    os.close(pending.finish())
    assert (tmp_path / "f").read_bytes() == data, "bulk on one thread and finish on another must write every byte"


def test_an_error_in_the_bulk_write_is_raised_by_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pending = DirectWriter().begin(tmp_path / "f", _aligned(os.urandom(3 * ALIGN)), aligned=True)
    real_write = os.write

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    pending.bulk()  # on a helper thread this must not raise: the creating thread hears of it
    monkeypatch.setattr(os, "write", real_write)
    with pytest.raises(OSError) as raised:
        pending.finish()
    assert raised.value.errno == errno.ENOSPC, "finish must raise the error the bulk write met"
    with pytest.raises(OSError) as closed:
        os.fstat(pending.fd)
    assert closed.value.errno == errno.EBADF, "a failed finish must close the file"
