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
#: For big batches of narrow rows (a bulk submission's plain tasks): fewer, longer statements
#: cost SQLite less per row (17 columns: 1764 rows a statement, ~1.5 us/task less than 500).
MAX_STATEMENT_ROWS = _MAX_VARIABLES


def rows_per_statement(ncols: int, max_rows: int = _MAX_ROWS) -> int:
    return max(1, min(max_rows, _MAX_VARIABLES // ncols))


def insert_rows(
    conn: sqlite3.Connection, head: str, ncols: int, rows: Sequence[Sequence[Any]],
    max_rows: int = _MAX_ROWS,
) -> int | None:
    """`head` is `INSERT INTO t (c1, ..., cn)`; each row has `ncols` values. Returns the rowid
    of the last row inserted (None when there were no rows). `max_rows`: rows per statement
    at most (MAX_STATEMENT_ROWS: as many as SQLite's variable limit lets in)."""
    return insert_flat(conn, head, ncols, flat_rows(rows, ncols, max_rows))


def flat_rows(
    rows: Sequence[Sequence[Any]], ncols: int, max_rows: int = _MAX_ROWS
) -> list[list[Any]]:
    """The parameters of insert_rows' statements: each statement's rows, flattened."""
    per = rows_per_statement(ncols, max_rows)
    return [[value for row in rows[start:start + per] for value in row]
            for start in range(0, len(rows), per)]


def insert_flat(
    conn: sqlite3.Connection, head: str, ncols: int, statements: Sequence[list[Any]]
) -> int | None:
    """insert_rows with its parameters made beforehand (flat_rows)."""
    one = "(" + ", ".join("?" * ncols) + ")"
    last: int | None = None
    for params in statements:
        last = conn.execute(
            f"{head} VALUES {', '.join([one] * (len(params) // ncols))}", params
        ).lastrowid
    return last
