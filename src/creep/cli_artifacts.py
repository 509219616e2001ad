"""`creep artifacts ...`: look after the artifact store."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from creep.cli_http.common import error_line, plain_console
from creep.domain.errors import CreepError

artifacts_app = typer.Typer(help="Task artifacts: files stored by checksum.", no_args_is_help=True)
console = plain_console()  # prints data: no Rich markup
err = plain_console(stderr=True)

#: Exit codes of `reconcile`, for scripts.
EXIT_CLEAN, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2


@artifacts_app.command("reconcile")
def reconcile_command(
    database_url: Annotated[
        str | None, typer.Option("--database-url", envvar="CREEP_DATABASE_URL")
    ] = None,
    artifact_dir: Annotated[
        str | None,
        typer.Option("--artifact-dir", envvar="CREEP_ARTIFACT_DIR",
                     help="Where artifact content is stored (default ./creep-artifacts)."),
    ] = None,
    repair: Annotated[bool, typer.Option(help="Fix what can be fixed.")] = False,
    orphan_grace: Annotated[
        float,
        typer.Option(min=0, help="Seconds a file without a row is left alone (upload in flight)."),
    ] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare artifact rows with the files on disk: rows whose file is missing, files whose
    checksum differs, orphan files. Exit 0: consistent (after --repair, if given); 1: drift
    remains; 2: could not run."""
    from creep.app import Creep

    try:
        app = Creep(database_url, artifact_dir=artifact_dir)
        try:
            report = app.reconcile_artifacts(repair=repair, orphan_grace=orphan_grace)
        finally:
            app.close()
    except CreepError as exc:
        err.print(error_line(str(exc)))
        raise typer.Exit(EXIT_ERROR) from None
    if as_json:
        print(json.dumps({
            "rows": report.rows, "files": report.files, "clean": report.clean,
            "repair": report.repair, "counts": report.counts(),
            "drift": [
                {"kind": d.kind, "checksum": d.checksum, "detail": d.detail,
                 "artifact_ids": d.artifact_ids, "repaired": d.repaired, "action": d.action}
                for d in report.drift
            ],
        }, indent=2))
    else:
        console.print(f"checked {report.rows} index rows and {report.files} files")
        if report.drift:
            table = Table(title="artifact drift")
            for column in ("kind", "checksum", "rows", "detail", "repair"):
                table.add_column(column)
            for d in report.drift:
                table.add_row(d.kind, d.checksum[:12], str(len(d.artifact_ids)), d.detail,
                              d.action or ("-" if not repair else "not repaired"))
            console.print(table)
        console.print("consistent" if report.clean else
                      f"{len(report.unresolved)} problem(s) remain"
                      + ("" if repair else "; run with --repair to fix what can be fixed"))
    raise typer.Exit(EXIT_CLEAN if report.clean else EXIT_DRIFT)
