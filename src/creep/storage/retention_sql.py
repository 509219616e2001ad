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
        a dependency that is gone (check_retry_dependencies).

        One call is one transaction of at most `limit` tasks. A batch of more than `limit`
        tasks that can go is marked (`batch_purges`) and its `batches` row deleted, so it is
        gone as a batch at once and no retry reopens it (task_retry refuses one of its
        tasks); its tasks then go `limit` at a time, in this call and the next ones, which
        resume from the mark after an interruption. One of them that something live refers
        to again meanwhile (a new dependant) stays until it can go."""
        marks = ", ".join("?" * len(_TERMINAL_TASK))
        with self._sx() as conn:
            skip: set[str] = set()
            rows: dict[str, str | None] = {}
            # A batch is judged once per call, not per task (a per-task check reads the
            # whole batch for each of its tasks). The candidates of batches that must stay
            # are left out and the next ones read, so old tasks of such batches never fill
            # the page and hold back the rest.
            for _ in range(_OPEN_BATCH_ROUNDS):
                rows = dict(self._retention_candidates(conn, cutoff, marks, skip, limit))
                found = self._open_batches(conn, rows, cutoff, marks, limit)
                if not found:
                    break
                skip |= found
            ids = [t for t, b in rows.items() if b is None]
            # Whole batches while they fit in `limit`; one that does not waits for a later
            # call (each deletes something, so the tasks before it run out).
            sizes: dict[str, int] = {}
            for b in rows.values():
                if b is not None and b not in skip:
                    sizes[b] = sizes.get(b, 0) + 1
            taken: list[str] = []
            for b, n in sizes.items():
                if len(ids) + n > limit:
                    break
                taken.append(b)
                ids.extend(t for t, of in rows.items() if of == b)
            self._delete_tasks(conn, ids)
            # A batch whose last task went goes with it: read from no task, it would say
            # `pending`, nothing completed, of a batch that ran to its end.
            for start in range(0, len(taken), 500):
                chunk = sorted(taken)[start:start + 500]
                conn.execute(
                    f"DELETE FROM batches WHERE batch_id IN ({', '.join('?' * len(chunk))}) "
                    "AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.batch_id = batches.batch_id)",
                    chunk,
                )
            return len(ids) + self._purge_marked(conn, cutoff, marks, limit - len(ids))

    def _delete_tasks(self, conn: Conn, ids: list[str]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            qs = ", ".join("?" * len(chunk))
            conn.execute(
                f"DELETE FROM task_events WHERE {self._events_of} task_id IN ({qs})", chunk
            )
            conn.execute(f"DELETE FROM tasks WHERE task_id IN ({qs})", chunk)

    def _purge_marked(self, conn: Conn, cutoff: datetime, marks: str, budget: int) -> int:
        """Delete up to `budget` tasks of the batches marked for deletion (those of the
        earliest cutoff first); a mark goes with its batch's last task."""
        done = 0
        for (batch,) in conn.execute(
            "SELECT batch_id FROM batch_purges ORDER BY cutoff, batch_id LIMIT 100"
        ).fetchall():
            if done >= budget:
                break
            want = budget - done
            ids = [t for t, _ in self._retention_candidates(
                conn, cutoff, marks, set(), want, [batch], marked=True)]
            self._delete_tasks(conn, ids)
            done += len(ids)
            if len(ids) < want:  # none left that can go now: the mark goes with the last
                conn.execute(
                    "DELETE FROM batch_purges WHERE batch_id = ? "
                    "AND NOT EXISTS (SELECT 1 FROM tasks WHERE batch_id = ?)", (batch, batch))
        return done

    def _hold_batches(self, conn: Conn, batches: list[str]) -> None:
        """Wait for the retries of these batches' tasks in progress, and hold back new ones
        until this transaction ends (PostgreSQL; SQLite has one writer at a time)."""

    def _retention_filter(
        self, cutoff: datetime, marks: str, skip_batches: set[str],
        only_batches: list[str] | None, marked: bool,
    ) -> tuple[str, list[Any]]:
        """The condition a task the sweep may delete meets, and its parameters."""
        skip = sorted(skip_batches)
        not_in = (f"AND (batch_id IS NULL OR batch_id NOT IN ({', '.join('?' * len(skip))})) "
                  if skip else "")
        only = only_batches or []
        of = f"AND batch_id IN ({', '.join('?' * len(only))}) " if only else ""
        # A marked batch's tasks go by the mark; any other batch is judged whole first.
        purging = ("" if marked else
                   "AND (batch_id IS NULL OR batch_id NOT IN (SELECT batch_id FROM batch_purges)) ")
        return (
            # created_at < cutoff is implied (a task finishes after it is created)
            # and has an index (migrations sqlite 0015, postgres 0016): the sweep
            # reads old tasks, not every task (finished_at has none, to keep
            # PostgreSQL's completions HOT).
            f"created_at < ? AND status IN ({marks}) AND finished_at < ? "
            # Per candidate, its dependants by key (a join here was planned as a
            # read of every task on PostgreSQL).
            "AND NOT EXISTS (SELECT 1 FROM task_dependencies d "
            "WHERE d.depends_on_id = tasks.task_id AND (SELECT c.status FROM tasks c "
            f"WHERE c.task_id = d.task_id) NOT IN ({marks})) "
            # Both read once (few rows: open executions, active leases), not per task.
            "AND task_id NOT IN (SELECT task_id FROM task_executions "
            "WHERE state IN ('pending', 'running') AND task_id IS NOT NULL) "
            "AND task_id NOT IN (SELECT task_id FROM leases WHERE status = 'ACTIVE') "
            f"{not_in}{of}{purging}",
            [self._ts(cutoff), *_TERMINAL_TASK, self._ts(cutoff), *_TERMINAL_TASK,
             *skip, *only],
        )

    def _retention_candidates(
        self, conn: Conn, cutoff: datetime, marks: str, skip_batches: set[str],
        limit: int | None, only_batches: list[str] | None = None, *, marked: bool = False,
    ) -> list[tuple[str, str | None]]:
        """Tasks the sweep may delete (task_id, batch_id), locked: up to `limit` of them not
        in `skip_batches`, or of the batches `only_batches` (all of them without `limit`).
        Tasks of batches marked for deletion only with `marked` (then `only_batches`)."""
        where, params = self._retention_filter(cutoff, marks, skip_batches, only_batches,
                                               marked)
        return [
            (r[0], r[1]) for r in conn.execute(
                f"SELECT task_id, batch_id FROM tasks WHERE {where}"
                f"{'' if limit is None else 'LIMIT ?'}"
                # Held until the deletion commits (PostgreSQL): a retry, or a submission
                # that names one as its dependency, waits and then finds it gone; one that
                # locked it first is skipped, and the task read again at the next run (and
                # its batch, not all of whose tasks are then held, is kept whole).
                f"{self._for_update and self._for_update + ' SKIP LOCKED'}",
                (*params, *([] if limit is None else [limit])),
            ).fetchall()
        ]

    def _open_batches(
        self, conn: Conn, held: dict[str, str | None], cutoff: datetime, marks: str,
        limit: int,
    ) -> set[str]:
        """The batches of `held` (task_id -> batch_id, candidates this sweep has locked) that
        cannot go whole: with a task not finished, or finished since the cutoff (read
        without locks, through the batch index), or with one that is not among the sweep's
        candidates: one still referred to, or (of a batch of at most `limit` tasks, whose
        other candidates are then locked into `held`) locked by another transaction (e.g. a
        retry). A task committed into a batch after this read comes after the sweep (the
        batch was finished, and held whole, when the sweep judged it).

        A batch of more tasks than `limit` that can go is not locked whole (its locks alone
        would be as large as its deletion): it is marked for deletion here, its retries
        held off (_hold_batches) while it is judged, and returned among the others, its
        tasks left to _purge_marked."""
        batches = sorted({b for b in held.values() if b is not None})
        sizes: dict[str, int] = {}
        for start in range(0, len(batches), 500):
            chunk = batches[start:start + 500]
            sizes.update((r[0], int(r[1])) for r in conn.execute(
                f"SELECT batch_id, count(*) FROM tasks WHERE batch_id IN "
                f"({', '.join('?' * len(chunk))}) GROUP BY batch_id",
                chunk,
            ).fetchall())
        large = [b for b in batches if sizes.get(b, 0) > limit]
        self._hold_batches(conn, large)
        found: set[str] = set()
        small = [b for b in batches if b not in large]
        for start in range(0, len(small), 500):
            chunk = small[start:start + 500]
            found.update(r[0] for r in conn.execute(
                f"SELECT DISTINCT batch_id FROM tasks WHERE batch_id IN "
                f"({', '.join('?' * len(chunk))}) AND (status NOT IN ({marks}) "
                "OR finished_at >= ?)",
                (*chunk, *_TERMINAL_TASK, self._ts(cutoff)),
            ).fetchall())
        small = [b for b in small if b not in found]
        for start in range(0, len(small), 500):
            held.update(self._retention_candidates(
                conn, cutoff, marks, set(), None, small[start:start + 500]))
        mine: dict[str, int] = {}
        for batch in held.values():
            if batch is not None and batch in sizes:
                mine[batch] = mine.get(batch, 0) + 1
        found.update(b for b in small if sizes[b] != mine[b])
        # A large batch still running is told by its first open task; one that is not is
        # read whole once, by the count of its tasks that can go (finished ones included).
        purge = [b for b in large if conn.execute(
            f"SELECT 1 FROM tasks WHERE batch_id = ? AND (status NOT IN ({marks}) "
            "OR finished_at >= ?) LIMIT 1", (b, *_TERMINAL_TASK, self._ts(cutoff)),
        ).fetchone() is None]
        found.update(b for b in large if b not in purge)
        for start in range(0, len(purge), 500):
            chunk = purge[start:start + 500]
            where, params = self._retention_filter(cutoff, marks, set(), chunk, False)
            free = dict(conn.execute(
                f"SELECT batch_id, count(*) FROM tasks WHERE {where} GROUP BY batch_id",
                params,
            ).fetchall())
            found.update(b for b in chunk if free.get(b) != sizes[b])
        purge = [b for b in purge if b not in found]
        for batch in purge:  # gone as a batch from now on
            conn.execute("INSERT INTO batch_purges (batch_id, cutoff) VALUES (?, ?)",
                         (batch, self._ts(cutoff)))
            conn.execute("DELETE FROM batches WHERE batch_id = ?", (batch,))
        return found | set(purge)

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
