"""Pattern checks match the whole value: a trailing newline (which `$` alone lets through)
is refused like any other character outside the pattern, through the public API."""

from __future__ import annotations

from pathlib import Path

import pytest

from creep import Creep, ValidationError


@pytest.fixture
def app(tmp_path: Path) -> Creep:
    return Creep(f"sqlite:///{tmp_path}/creep.db")


def test_a_currency_with_a_trailing_newline_is_refused(app: Creep) -> None:
    with pytest.raises(ValidationError) as raised:
        app.submit(tenant_id="t1", task_type="X", currency="USD\n")
    assert [e[0] for e in raised.value.errors] == ["currency"]
    app.close()


def test_an_artifact_mime_type_with_a_trailing_newline_is_refused(
    app: Creep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREEP_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    task = app.submit(tenant_id="t1", task_type="X")
    with pytest.raises(ValidationError, match="mime_type"):
        app.put_artifact(task.task_id, b"x", kind="output", file_name="a.txt",
                         mime_type="text/plain\n")
    assert app.list_artifacts(task.task_id) == []
    app.close()
