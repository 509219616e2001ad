"""The worker app `creep up` runs: the built-in example handlers (creep.examples)."""

from __future__ import annotations

from creep.examples import build_example_app

# `creep worker --database-url` points it at the database `creep up` uses.
app = build_example_app()
