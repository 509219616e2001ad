"""The chunks of a bulk submission written side by side (bulk_submit._ramped_bounds)."""

from __future__ import annotations

import pytest

from creep.bulk_submit import _ramped_bounds


@pytest.mark.parametrize("n", [5001, 5100, 7499, 10_000, 12_345, 50_000, 1_000_003])
@pytest.mark.parametrize("writers", [2, 3])
def test_chunks_cover_the_submission_in_order_smaller_at_both_ends(n: int, writers: int) -> None:
    chunk = 5000
    bounds = _ramped_bounds(n, chunk, writers)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a < b for a, b in bounds)
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(len(bounds) - 1))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) <= chunk
    assert sizes[:2] == [chunk // 4, chunk // 2]  # the first writers start soon
    tail = sizes[-writers:]  # and end together: the rest shared evenly
    assert max(tail) - min(tail) <= 1 and all(size == chunk for size in sizes[2:-writers])


def test_a_full_sized_submission_is_mostly_full_chunks() -> None:
    sizes = [b - a for a, b in _ramped_bounds(50_000, 5000, 2)]
    assert sizes == [1250, 2500, *[5000] * 8, 3125, 3125]
