"""Every proxy fault during cold sequential and cold random reads through a real mount.

Transient faults (error bursts, resets, stalls, a flipped byte) must be invisible to the
reader: every byte arrives, verified. Faults that last (403, 404, an object changed under
the mount, a server ignoring Range) must fail the affected reads with an errno, serve no
wrong byte, and leave the rest of the mount working. Each case is a row of the fault table.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.conftest import (
    BUCKET,
    FaultArtifact,
    read_random,
    read_sequential,
    wrong_bytes,
)
from tests.faults.proxy import Fault
from tests.mlfs_cli import mounted

DATA_GET = r"^GET /faults/.*data\.bin"


@dataclass(frozen=True)
class Case:
    faults: tuple[Fault, ...]
    expect: str  # "exact", or the errno name reads of data.bin fail with
    changes_object: bool = False


def _status(status: int, code: str, count: int = 3) -> tuple[Fault, ...]:
    return (Fault("status", DATA_GET, count=count, status=status, code=code),)


CASES: dict[str, Case] = {
    "500 burst": Case(_status(500, "InternalError"), "exact"),
    "503 burst": Case(_status(503, "ServiceUnavailable"), "exact"),
    "SlowDown burst": Case(_status(503, "SlowDown"), "exact"),
    "429 burst": Case(_status(429, "TooManyRequests"), "exact"),
    "reset after 1000 body bytes": Case((Fault("reset", DATA_GET, count=2, after_bytes=1000),), "exact"),
    "reset after 0 body bytes": Case((Fault("reset", DATA_GET, count=2, after_bytes=0),), "exact"),
    "stall mid-body": Case((Fault("stall", DATA_GET, count=2, after_bytes=100_000, stall_seconds=2),), "exact"),
    "flipped byte": Case((Fault("flip", DATA_GET, count=1),), "exact"),
    "flipped bytes at random": Case((Fault("flip", DATA_GET, count=3, probability=0.3),), "exact"),
    "403 on every GET": Case(_status(403, "AccessDenied", count=-1), "EIO"),
    "404 on every GET": Case(_status(404, "NoSuchKey", count=-1), "ESTALE"),
    "object changed between range GETs": Case((), "ESTALE", changes_object=True),
    "Range ignored, whole object sent": Case((Fault("ignore_range", DATA_GET, count=-1, skip=1),), "EIO"),
}
LASTING = {name for name, case in CASES.items() if case.expect != "exact"}


def _params() -> list:
    return [pytest.param(name, mode, id=f"{name}-{mode}",
                         marks=[pytest.mark.expect_warnings] if name in LASTING else [])
            for name in sorted(CASES) for mode in ("sequential", "random")]


@pytest.mark.parametrize(("name", "mode"), _params())
def test_proxy_fault_during_cold_read(fault_artifact: FaultArtifact, proxy_for, tmp_path: Path,
                                      name: str, mode: str, fault_case) -> None:
    case = CASES[name]
    art = fault_artifact
    faults = list(case.faults)
    if case.changes_object:
        art = fault_artifact.copy(tmp_path, "changing")
        client = art.server.client()

        def overwrite() -> None:
            client.put_object(Bucket=BUCKET, Key=art.prefix + "data.bin", Body=art.data[::-1])

        # The first range GET passes; before the second, the object is overwritten.
        faults = [Fault("action", DATA_GET, count=1, skip=1, action=overwrite)]
    proxy = proxy_for(*faults, seed=sum(map(ord, name + mode)))
    cache = tmp_path / "cache"
    with mounted(art.manifest, tmp_path / "mnt", proxy.env(), "--cache", cache) as mp:
        if mode == "sequential":
            got, err = read_sequential(mp / "data.bin")
            errors = [err] if err is not None else []
            wrong = wrong_bytes(got, art.data)
            served = len(got)
        else:
            # Lasting faults cost every read its whole retry budget: fewer reads show it.
            reads = 40 if case.expect == "exact" else 12
            served, wrong, errors = read_random(mp / "data.bin", art.data, seed=len(name), reads=reads)
            if case.changes_object:
                # Only the range GETs sent after the change fail, and with several in
                # flight at once which chunks those are is a matter of timing: the
                # random reads may all land on chunks fetched before it. A pass over
                # the whole file reaches every chunk not fetched intact.
                got, err = read_sequential(mp / "data.bin")
                errors += [err] if err is not None else []
                wrong += wrong_bytes(got, art.data)
        # The rest of the mount is untouched by a fault in one object.
        config_ok = (mp / "config.json").read_bytes() == art.config
    struck = sum(f.hits for f in faults)
    assert struck > 0, f"the fault never struck: {proxy.requests}"
    assert config_ok, "config.json was not served exactly"
    if case.expect == "exact":
        assert errors == [], f"a transient fault reached the reader: {[errno.errorcode[e] for e in errors]}"
        if mode == "sequential":
            assert served == len(art.data)
        outcome = f"all {served} bytes exact after {struck} faults"
    else:
        assert errors, "a lasting fault was not reported to the reader"
        want = getattr(errno, case.expect)
        assert set(errors) == {want}, f"expected {case.expect}, got {[errno.errorcode[e] for e in errors]}"
        outcome = f"{case.expect} on {len(errors)} reads, {served} bytes served exact"
    _assert_store_clean(cache, art)
    fault_case.record(outcome, wrong_bytes=wrong)


def _assert_store_clean(cache: Path, art: FaultArtifact) -> None:
    """Only chunks of the manifest, each matching its name, and no temp files left."""
    import hashlib
    import json

    known = {c for f in json.loads(art.manifest.read_text())["files"] for c in f["chunks"]}
    for p in (cache / "chunks").rglob("*"):
        if p.is_file():
            assert p.name in known, f"a chunk the manifest does not name was stored: {p.name}"
            assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, f"corrupt chunk stored: {p.name}"
    assert not any((cache / "tmp").iterdir()), "temp files left behind"
