"""Multi-row INSERTs for SQLite.

executemany() runs one sqlite3_step per row, and Python's sqlite3 releases the GIL around
every step: under API load the group-commit writer thread then waits a whole GIL switch
interval per row to get it back from the busy event loop. One `VALUES (...), (...)` statement
per chunk does the same inserts (same constraints, same triggers) in one step."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

# Well under SQLite's default limit of 32766 bound variables per statement.
_MAX_VARIABLES = 30_000
_MAX_ROWS = 500


def rows_per_statement(ncols: int) -> int:
    return max(1, min(_MAX_ROWS, _MAX_VARIABLES // ncols))


def insert_rows(
    conn: sqlite3.Connection, head: str, ncols: int, rows: Sequence[Sequence[Any]]
) -> int | None:
    """`head` is `INSERT INTO t (c1, ..., cn)`; each row has `ncols` values. Returns the rowid
    of the last row inserted (None when there were no rows)."""
    per = rows_per_statement(ncols)
    one = "(" + ", ".join("?" * ncols) + ")"
    last: int | None = None
    for start in range(0, len(rows), per):
        chunk = rows[start:start + per]
        last = conn.execute(
            f"{head} VALUES {', '.join([one] * len(chunk))}",
            [value for row in chunk for value in row],
        ).lastrowid
    return last
