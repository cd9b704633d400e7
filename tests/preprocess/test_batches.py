"""How a run cuts its inputs into batches for the I/O threads and workers."""

from __future__ import annotations

import pytest

from mlfs.preprocess.runner import BATCH, Run


def _sizes(count: int, workers: int, io_threads: int) -> list[int]:
    run = Run.__new__(Run)  # only the two attributes _batches reads
    run.workers, run.io_threads = workers, io_threads
    planned = [(i, f"{i}.npy") for i in range(count)]
    batches = run._batches(planned)  # type: ignore[arg-type]
    assert [item for batch in batches for item in batch] == planned, \
        f"{count} inputs must each travel once, in order"
    return [len(batch) for batch in batches]


@pytest.mark.parametrize("count", [0, 1, 5, 13, 30, 600, 2001])
def test_every_input_travels_once_in_order(count: int) -> None:
    sizes = _sizes(count, 2, 4)
    assert all(0 < n <= BATCH for n in sizes), f"batch sizes {sizes} must lie in 1..{BATCH}"


def test_a_long_run_starts_and_ends_with_one_input_per_worker() -> None:
    sizes = _sizes(600, 2, 4)
    assert sizes[:2] == [1, 1] and sizes[-2:] == [1, 1], \
        f"each worker must start on one image and end on one, got {sizes[:4]}…{sizes[-4:]}"
    assert max(sizes) == BATCH, "the middle of a long run must travel in full batches"
