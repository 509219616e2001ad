"""PostgreSQL connections detect a vanished server: every connection creep opens has TCP
keepalives and a user timeout (README, PostgreSQL), so a store call on a dead network path
fails in about half a minute instead of hanging a worker for hours."""

from __future__ import annotations

import socket

from creep import Creep


def _tcp_options(app: Creep) -> dict[str, int]:
    with app.store.pool.connection() as conn:  # type: ignore[attr-defined]
        sock = socket.socket(fileno=socket.dup(conn.pgconn.socket))
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()


def test_connections_have_keepalives_and_a_user_timeout(pg_schema_url: str) -> None:
    app = Creep(pg_schema_url)
    try:
        assert _tcp_options(app) == {"keepalive": 1, "idle": 15, "interval": 5, "count": 3,
                                     "user_timeout_ms": 30_000}
    finally:
        app.close()


def test_the_url_overrides_the_tcp_defaults(pg_schema_url: str) -> None:
    app = Creep(f"{pg_schema_url}&keepalives_idle=60&tcp_user_timeout=0")
    try:
        options = _tcp_options(app)
        assert (options["idle"], options["user_timeout_ms"], options["interval"]) == (60, 0, 5)
    finally:
        app.close()
