"""Retention and lock housekeeping in shared SQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from creep.storage.schedule_sql_base import _TERMINAL_TASK, Conn, ScheduleSqlBase

#: Rounds of the task sweep that look past candidates of open batches (each finds at least
#: one more open batch); past them what is left waits for the next call.
_OPEN_BATCH_ROUNDS = 8


class RetentionSqlMixin(ScheduleSqlBase):
    # -- retention -----------------------------------------------------------------------------

    def retention_purge_executions(self, cutoff: datetime, limit: int = 10_000) -> int:
        """Delete finished executions that ended before `cutoff`."""
        with self._sx() as conn:
            cur = conn.execute(
                "DELETE FROM task_executions WHERE id IN (SELECT id FROM task_executions "
                "WHERE finished_at < ? AND state NOT IN ('pending', 'running') LIMIT ?)",
                (self._ts(cutoff), limit),
            )
            return int(cur.rowcount)

    def retention_purge_locks(self, cutoff: datetime, now: datetime) -> int:
        """Mark active locks past their expiry `expired`, then delete released/expired lock
        rows last changed before `cutoff`."""
        self.lock_expire_lapsed(now)
        with self._sx() as conn:
            cur = conn.execute(
                "DELETE FROM task_locks WHERE state IN ('released', 'expired') AND updated_at < ?",
                (self._ts(cutoff),),
            )
            return int(cur.rowcount)

    def retention_purge_tasks(self, cutoff: datetime, limit: int = 5_000) -> int:
        """Delete finished tasks (and their events) that ended before `cutoff`, unless
        something live still refers to them: a task that has not finished depending on them,
        a schedule execution that has not followed its task yet (it would be called
        interrupted), or a lease still ACTIVE (constraints.keep_leases). The tasks of a batch
        (`batch_id`) go together or not at all: only once every task of it can go (a batch's
        counts and progress are read from its tasks, and a retry of one of them reopens it).
        A finished dependant does not keep them: it still names them, and its retry refuses
        a dependency that is gone (check_retry_dependencies)."""
        marks = ", ".join("?" * len(_TERMINAL_TASK))
        with self._sx() as conn:
            kept: set[str] = set()
            # A batch is judged once per call, not per task (a per-task check reads the
            # whole batch for each of its tasks). The candidates of batches that must stay
            # are left out and the next ones read, so old tasks of such batches never fill
            # the page and hold back the rest.
            for _ in range(_OPEN_BATCH_ROUNDS):
                rows = dict(self._retention_candidates(conn, cutoff, marks, kept, limit))
                found = self._open_batches(conn, rows, cutoff, marks, kept)
                if not found:
                    break
                kept |= found
            ids = [t for t, b in rows.items() if b is None or b not in kept]
            if not ids:
                return 0
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                qs = ", ".join("?" * len(chunk))
                conn.execute(
                    f"DELETE FROM task_events WHERE {self._events_of} task_id IN ({qs})", chunk
                )
                conn.execute(f"DELETE FROM tasks WHERE task_id IN ({qs})", chunk)
            # A batch whose last task went goes with it: read from no task, it would say
            # `pending`, nothing completed, of a batch that ran to its end.
            emptied = sorted({b for b in rows.values() if b is not None and b not in kept})
            for start in range(0, len(emptied), 500):
                chunk = emptied[start:start + 500]
                conn.execute(
                    f"DELETE FROM batches WHERE batch_id IN ({', '.join('?' * len(chunk))}) "
                    "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.batch_id = batches.batch_id)",
                    chunk,
                )
            return len(ids)

    def _retention_candidates(
        self, conn: Conn, cutoff: datetime, marks: str, skip_batches: set[str],
        limit: int | None, only_batches: list[str] | None = None,
    ) -> list[tuple[str, str | None]]:
        """Tasks the sweep may delete (task_id, batch_id), locked: up to `limit` of them not
        in `skip_batches`, or (`only_batches`, no limit) every one of those batches."""
        skip = sorted(skip_batches)
        not_in = (f"AND (batch_id IS NULL OR batch_id NOT IN ({', '.join('?' * len(skip))})) "
                  if skip else "")
        only = only_batches or []
        of = f"AND batch_id IN ({', '.join('?' * len(only))}) " if only else ""
        return [
            (r[0], r[1]) for r in conn.execute(
                # created_at < cutoff is implied (a task finishes after it is created)
                # and has an index (migrations sqlite 0015, postgres 0016): the sweep
                # reads old tasks, not every task (finished_at has none, to keep
                # PostgreSQL's completions HOT).
                f"SELECT task_id, batch_id FROM tasks WHERE created_at < ? AND status IN ({marks}) "
                "AND finished_at < ? "
                # Per candidate, its dependants by key (a join here was planned as a
                # read of every task on PostgreSQL).
                "AND NOT EXISTS (SELECT 1 FROM task_dependencies d "
                "WHERE d.depends_on_id = tasks.task_id AND (SELECT c.status FROM tasks c "
                f"WHERE c.task_id = d.task_id) NOT IN ({marks})) "
                # Both read once (few rows: open executions, active leases), not per task.
                "AND task_id NOT IN (SELECT task_id FROM task_executions "
                "WHERE state IN ('pending', 'running') AND task_id IS NOT NULL) "
                "AND task_id NOT IN (SELECT task_id FROM leases WHERE status = 'ACTIVE') "
                f"{not_in}{of}{'' if limit is None else 'LIMIT ?'}"
                # Held until the deletion commits (PostgreSQL): a retry, or a submission
                # that names one as its dependency, waits and then finds it gone; one that
                # locked it first is skipped, and the task read again at the next run (and
                # its batch, not all of whose tasks are then held, is kept whole).
                f"{self._for_update and self._for_update + ' SKIP LOCKED'}",
                (self._ts(cutoff), *_TERMINAL_TASK, self._ts(cutoff), *_TERMINAL_TASK,
                 *skip, *only, *([] if limit is None else [limit])),
            ).fetchall()
        ]

    def _open_batches(
        self, conn: Conn, held: dict[str, str | None], cutoff: datetime, marks: str,
        kept: set[str],
    ) -> set[str]:
        """The batches of `held` (task_id -> batch_id, candidates this sweep has locked) that
        cannot go whole: with a task not finished, or finished since the cutoff (read
        without locks, through the batch index), or with one that is not among the sweep's
        locked candidates once the rest of the others' candidates (past the page) were
        locked into `held`: one still referred to, or locked by another transaction (e.g. a
        retry). A task committed into a batch after this read comes after the sweep (the
        batch was finished, and held whole, when the sweep judged it)."""
        batches = sorted({b for b in held.values() if b is not None})
        found: set[str] = set()
        for start in range(0, len(batches), 500):
            chunk = batches[start:start + 500]
            found.update(r[0] for r in conn.execute(
                f"SELECT DISTINCT batch_id FROM tasks WHERE batch_id IN "
                f"({', '.join('?' * len(chunk))}) AND (status NOT IN ({marks}) "
                "OR finished_at >= ?)",
                (*chunk, *_TERMINAL_TASK, self._ts(cutoff)),
            ).fetchall())
        rest = [b for b in batches if b not in found]
        for start in range(0, len(rest), 500):
            held.update(self._retention_candidates(
                conn, cutoff, marks, kept, None, rest[start:start + 500]))
        mine: dict[str, int] = {}
        for batch in held.values():
            if batch is not None and batch not in found:
                mine[batch] = mine.get(batch, 0) + 1
        for start in range(0, len(rest), 500):
            chunk = rest[start:start + 500]
            found.update(r[0] for r in conn.execute(
                f"SELECT batch_id, count(*) FROM tasks WHERE batch_id IN "
                f"({', '.join('?' * len(chunk))}) GROUP BY batch_id",
                chunk,
            ).fetchall() if r[1] != mine[r[0]])
        return found

    def retention_purge_audit(self, cutoff: datetime, limit: int = 10_000) -> int:
        """Delete audit events (the REST API's audit log) recorded before `cutoff`. The
        database itself refuses to delete rows younger than 90 days."""
        with self._sx() as conn:
            cur = conn.execute(
                "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events "
                "WHERE timestamp < ? LIMIT ?)",
                (int(cutoff.timestamp() * 1000), limit),
            )
            return int(cur.rowcount)

    def lock_expire_lapsed(self, now: datetime) -> int:
        """active -> expired for every lock past its expiry (monitoring sees the truth; a
        later acquire re-activates the row)."""
        with self._sx() as conn:
            cur = conn.execute(
                "UPDATE task_locks SET state = 'expired', updated_at = ? "
                "WHERE state = 'active' AND expires_at < ?",
                (self._ts(now), self._ts(now)),
            )
            return int(cur.rowcount)

    def lock_get(self, lock_key: str) -> dict[str, Any] | None:
        """The lock row as a dict (for operators and tests)."""
        with self._sx_read() as conn:
            row = conn.execute(
                "SELECT lock_key, holder_id, token, state, acquired_at, expires_at, "
                "released_at, purpose FROM task_locks WHERE lock_key = ?",
                (lock_key,),
            ).fetchone()
        if row is None:
            return None
        keys = ("lock_key", "holder_id", "token", "state", "acquired_at", "expires_at",
                "released_at", "purpose")
        d = dict(zip(keys, row, strict=True))
        for k in ("acquired_at", "expires_at", "released_at"):
            d[k] = self._from_ts(d[k])
        d["token"] = str(d["token"])
        return d
