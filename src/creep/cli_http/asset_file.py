"""Reading an asset import file (CSV or JSON lines) and checking every row before anything is
sent, with the server's own validators, so each problem is reported with its line number.

CSV: a header row; each column an asset field (asset_id, tenant_id, project_id, env,
sku_category, sku_code, status, max_concurrency, health_score, cooldown_seconds,
cost_per_lease, currency), `attributes` as a JSON object, or one `attr.<name>` column per
attribute (a number, true or false becomes a JSON number/boolean, anything else text). An empty
cell leaves the field unset. JSON lines: one asset object per line (blank lines skipped). A
.json file is refused, naming these two."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from creep.api.asset_schemas import AssetIn
from creep.domain.asset import validate_asset_spec
from creep.domain.errors import ValidationError
from creep.domain.text import loads_exact

ASSET_FIELDS = frozenset(AssetIn.model_fields)
ATTR_PREFIX = "attr."
#: Integer columns: a CSV cell is text, and the request model takes JSON integers only.
INT_COLUMNS = frozenset({"max_concurrency", "health_score", "cooldown_seconds"})
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(slots=True)
class Row:
    line: int
    asset: dict[str, Any]


@dataclass(slots=True)
class RowError:
    line: int | None  # None: the whole file (e.g. a bad header)
    field: str
    rule: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        return f"{where}: {self.field}: {self.rule}" if self.field else f"{where}: {self.rule}"

    def json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "rule": self.rule}


@dataclass(slots=True)
class AssetFile:
    rows: list[Row] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    @property
    def bad_lines(self) -> set[int | None]:
        return {e.line for e in self.errors}


class FileProblem(Exception):
    """The file cannot be read as a whole (missing, not UTF-8, unknown columns)."""


def read_asset_file(path: Path, tenant_id: str | None) -> AssetFile:
    """Every row parsed and checked; rows with a problem are in `errors`, not in `rows`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileProblem(f"cannot read {str(path)!r}: {exc}") from None
    if path.suffix.lower() == ".json":
        # Read as CSV, its first line was a header of "unknown column(s)".
        raise FileProblem(
            f"cannot import {str(path)!r}: a .json file is not an import format; use CSV "
            "(FILE.csv, a header row) or JSON lines (FILE.jsonl, one asset object per line; "
            "from a JSON array: jq -c '.[]' FILE.json > FILE.jsonl)")
    parsed = _jsonl(text) if path.suffix.lower() in (".jsonl", ".ndjson") else _csv(text)
    result = AssetFile(errors=parsed.errors)
    seen_ids: dict[str, int] = {}
    for row in parsed.rows:
        if tenant_id is not None:
            row.asset.setdefault("tenant_id", tenant_id)
        normal, problems = check_asset(row.asset)
        asset_id = row.asset.get("asset_id")
        if isinstance(asset_id, str) and asset_id:
            if asset_id in seen_ids:
                problems.append(("asset_id", f"repeats the asset_id of line {seen_ids[asset_id]}"))
            seen_ids.setdefault(asset_id, row.line)
        if problems:
            result.errors.extend(RowError(row.line, f, r) for f, r in problems)
        else:
            result.rows.append(Row(row.line, normal))
    result.errors.sort(key=lambda e: e.line or 0)
    return result


def check_asset(asset: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """What the server would refuse in this asset (its request model, then its rules), and the
    asset as JSON with typed values (CSV cells are text)."""
    try:
        item = AssetIn.model_validate(asset)
    except PydanticValidationError as exc:
        return asset, [(".".join(str(p) for p in e["loc"]) or "asset", e["msg"])
                       for e in exc.errors()]
    except ValidationError as exc:  # the model's own check (text or numbers no JSON stores)
        return asset, list(exc.errors)
    try:
        # The tenant itself is checked by the server (it may not exist, or not be the key's).
        validate_asset_spec(item.fields(item.tenant_id or "default"))
    except ValidationError as exc:
        return asset, list(exc.errors)
    return item.model_dump(mode="json", exclude_unset=True, exclude_none=True), []


def _jsonl(text: str) -> AssetFile:
    out = AssetFile()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = loads_exact(line)
        except ValueError as exc:  # orjson.JSONDecodeError included
            out.errors.append(RowError(number, "", f"not valid JSON ({exc})"))
            continue
        if not isinstance(value, dict):
            out.errors.append(RowError(number, "", "must be a JSON object (an asset)"))
            continue
        out.rows.append(Row(number, value))
    return out


def _csv(text: str) -> AssetFile:
    reader = csv.reader(text.splitlines(keepends=True))
    header = next(reader, None)
    if not header:
        raise FileProblem("the CSV file is empty (it needs a header row)")
    columns = [c.strip() for c in header]
    unknown = [c for c in columns
               if c not in ASSET_FIELDS and not (c.startswith(ATTR_PREFIX) and len(c) > 5)]
    if unknown:
        raise FileProblem(
            f"line 1: unknown column(s) {', '.join(repr(c) for c in unknown)}; columns are "
            f"asset fields ({', '.join(sorted(ASSET_FIELDS))}) or attr.<name>")
    if "attributes" in columns and any(c.startswith(ATTR_PREFIX) for c in columns):
        raise FileProblem("line 1: give attributes as an `attributes` column or as attr.<name> "
                          "columns, not both")
    out = AssetFile()
    for cells in reader:
        number = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(columns):
            out.errors.append(RowError(number, "", f"has {len(cells)} cells, the header "
                                                   f"{len(columns)}"))
            continue
        asset, problem = _csv_asset(columns, cells)
        if problem is not None:
            out.errors.append(RowError(number, *problem))
        else:
            out.rows.append(Row(number, asset))
    return out


def _csv_asset(columns: list[str], cells: list[str]) -> tuple[dict[str, Any], tuple[str, str] | None]:
    asset: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for column, raw in zip(columns, cells, strict=True):
        value = raw.strip()
        if value == "":
            continue
        if column.startswith(ATTR_PREFIX):
            attributes[column[len(ATTR_PREFIX):]] = _scalar(value)
        elif column == "attributes":
            try:
                asset["attributes"] = loads_exact(value)
            except ValueError:
                return asset, ("attributes", "must be a JSON object")
        elif column in INT_COLUMNS and _INTEGER.fullmatch(value):
            asset[column] = int(value)
        else:
            asset[column] = value
    if attributes:
        asset["attributes"] = attributes
    return asset, None


def _scalar(value: str) -> Any:
    """A number, true or false as JSON; anything else stays text."""
    try:
        parsed = loads_exact(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, int | float | bool) else value
