"""`creep asset|lease|ledger|schedule|export ledger` against a real server (SQLite and
PostgreSQL), run in this process through the CLI's Typer app (the console script itself is
exercised in a process of its own by test_client_cli_edges)."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import orjson

from creep.client import Client
from tests.api.cli_helpers import creep_here, ok_json
from tests.api.conftest import Server

HEADER = "sku_category,sku_code,cost_per_lease,cooldown_seconds,attr.country,attr.tier\n"


def _codes(server: Server, tenant_id: str) -> list[str]:
    listed = ok_json(creep_here(server, "asset", "list", "--tenant", tenant_id, "--json"))
    return sorted(a["sku_code"] for a in listed)


def test_asset_import_is_all_or_nothing_unless_partial(server: Server, tmp_path: Path) -> None:
    tenant_id, _ = server.tenant()
    good = tmp_path / "good.csv"
    good.write_text(HEADER + "RAW_NET,ip.uk.1,1.5,30,uk,1\nRAW_NET,ip.uk.2,1.5,30,uk,2\n"
                             "\nRAW_NET,ip.de.1,2,,de,gold\n")
    result = creep_here(server, "asset", "import", str(good), "--tenant", tenant_id, "--json")
    imported = ok_json(result)
    assert imported["errors"] == [] and len(imported["imported"]) == 3
    assert "importing" in result.stderr  # the progress bar
    first = imported["imported"][0]
    assert first["attributes"] == {"country": "uk", "tier": 1}
    assert first["cost_per_lease"] == "1.5" and first["cooldown_seconds"] == 30

    # Bad rows: reported with their line numbers, and nothing is imported.
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "RAW_NET,ip.fr.1,1,0,fr,1\nRAW_NET,ip.fr.2,-1,0,fr,1\n"
                            "RAW_NET,,1,0,fr,1\nRAW_NET,ip.fr.3,1,0\nRAW_NET,ip.fr.4,1,0,fr,1\n")
    refused = creep_here(server, "asset", "import", str(bad), "--tenant", tenant_id)
    assert refused.returncode == 2, refused.stderr
    for expected in ("line 3: cost_per_lease", "line 4: sku_code", "line 5: has 4 cells",
                     "nothing imported"):
        assert expected in refused.stderr
    assert "line 2" not in refused.stderr and "line 6" not in refused.stderr
    assert _codes(server, tenant_id) == ["ip.de.1", "ip.uk.1", "ip.uk.2"]
    partial = creep_here(server, "asset", "import", str(bad), "--tenant", tenant_id, "--partial",
                    "--json")
    assert partial.returncode == 2
    report = orjson.loads(partial.stdout)
    assert [a["sku_code"] for a in report["imported"]] == ["ip.fr.1", "ip.fr.4"]
    assert sorted({e["line"] for e in report["errors"]}) == [3, 4, 5]

    # Rows only the server can refuse (an asset_id that exists): named by line too; with
    # --partial the rest of the request goes in, without it nothing does.
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("\n".join([
        orjson.dumps({"sku_category": "RAW_NET", "sku_code": "ip.es.1"}).decode(),
        orjson.dumps({"sku_category": "RAW_NET", "sku_code": "ip.es.2",
                      "asset_id": first["asset_id"]}).decode(),
        "", orjson.dumps({"sku_category": "RAW_NET", "sku_code": "ip.es.3",
                          "tenant_id": tenant_id}).decode(),
    ]) + "\n")
    strict = creep_here(server, "asset", "import", str(jsonl), "--tenant", tenant_id)
    assert strict.returncode == 2 and "line 2: asset_id" in strict.stderr
    assert "already exists" in strict.stderr and "nothing imported" in strict.stderr
    assert not any(c.startswith("ip.es") for c in _codes(server, tenant_id))
    mixed = creep_here(server, "asset", "import", str(jsonl), "--tenant", tenant_id, "--partial")
    assert mixed.returncode == 2 and "line 2: asset_id" in mixed.stderr
    assert "imported 2 assets; 1 row(s) refused" in mixed.stdout
    assert [c for c in _codes(server, tenant_id) if c.startswith("ip.es")] == [
        "ip.es.1", "ip.es.3"]

    # A request per row: the server refuses the second, the first is in; the CLI says so.
    chunked = creep_here(server, "asset", "import", str(jsonl), "--tenant", tenant_id,
                    "--chunk-size", "1")
    assert chunked.returncode == 2 and "line 2: asset_id" in chunked.stderr
    assert "imported before the failure: 1 assets (the rows before line 2)" in chunked.stderr

    # A file whose rows carry their asset_ids, imported again (a run cut short, repeated):
    # the server answers the assets of the first run and creates nothing more.
    again = tmp_path / "again.jsonl"
    again.write_text("\n".join(orjson.dumps(
        {"sku_category": "RAW_NET", "sku_code": f"ip.it.{i}", "asset_id": str(uuid.uuid4())}
    ).decode() for i in range(2)) + "\n")
    runs = [ok_json(creep_here(server, "asset", "import", str(again), "--tenant", tenant_id,
                          "--json")) for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]["imported"]) == 2
    assert [c for c in _codes(server, tenant_id) if c.startswith("ip.it")] == [
        "ip.it.0", "ip.it.1"]

    unknown = tmp_path / "unknown.csv"
    unknown.write_text("sku_category,sku_code,colour\nRAW_NET,x,red\n")
    wrong = creep_here(server, "asset", "import", str(unknown), "--tenant", tenant_id)
    assert wrong.returncode == 2 and "unknown column(s) 'colour'" in wrong.stderr
    missing = creep_here(server, "asset", "import", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_assets_leases_and_ledger(server: Server, tmp_path: Path) -> None:
    tenant_id, key = server.tenant()
    with Client(server.url, key) as c:
        asset = c.create_asset(sku_category="RAW_NET", sku_code="ip.uk.9", cost_per_lease="1.5")
        kind = f"LEASED-{uuid.uuid4().hex[:8]}"
        task = c.create_task(task_type=kind, env="dev", constraints={"keep_leases": True},
                             resource_hints=[{"sku_category": "RAW_NET"}])
        # A real claim: the asset is leased and its cost charged. The TTL outlasts the CLI
        # calls below on a slow machine (the lease expires with the claim).
        c.claim([kind], claim_ttl=600)
    aid, tid = asset.asset_id, task.task_id

    listed = ok_json(creep_here(server, "asset", "list", "--tenant", tenant_id, "--status", "IN_USE",
                           "--code", "ip.*", "--json"))
    assert [a["asset_id"] for a in listed] == [aid]
    table = creep_here(server, "asset", "list", "--tenant", tenant_id)
    assert table.returncode == 0 and "ip.uk.9" in table.stdout and "1.5 USD" in table.stdout
    assert ok_json(creep_here(server, "asset", "show", aid, "--json"))["current_concurrency"] == 1

    [lease] = ok_json(creep_here(server, "lease", "list", "--task", tid, "--json"))
    assert lease["status"] == "ACTIVE" and lease["asset_id"] == aid
    leases = creep_here(server, "lease", "list", "--asset", aid, "--status", "ACTIVE")
    assert leases.returncode == 0 and lease["lease_id"] in leases.stdout
    released = creep_here(server, "lease", "release", lease["lease_id"])
    assert released.returncode == 0 and "RELEASED" in released.stdout
    again = creep_here(server, "lease", "release", lease["lease_id"])
    assert again.returncode == 1 and "409" in again.stderr

    banned = creep_here(server, "asset", "ban", aid, "--reason", "provider complaint")
    assert banned.returncode == 0 and "BANNED" in banned.stdout
    assert ok_json(creep_here(server, "asset", "unban", aid, "--json"))["status"] == "READY"
    assert ok_json(creep_here(server, "asset", "archive", aid, "--json"))["status"] == "ARCHIVED"
    assert creep_here(server, "asset", "ban", aid).returncode == 1  # archived: a conflict
    events = ok_json(creep_here(server, "asset", "events", aid, "--json"))
    kinds = [e["event_type"] for e in events]
    assert kinds[0] == "IMPORTED" and "BANNED" in kinds and "ARCHIVED" in kinds
    table = creep_here(server, "asset", "events", aid)
    assert table.returncode == 0 and "provider complaint" not in table.stderr
    assert creep_here(server, "asset", "show", str(uuid.uuid4())).returncode == 1

    [cost] = ok_json(creep_here(server, "ledger", "list", "--task", tid, "--json"))
    assert (cost["entry_type"], cost["amount"]) == ("COST", "1.5")
    recorded = ok_json(creep_here(server, "ledger", "record", "--type", "REVENUE", "--amount", "4",
                             "--currency", "USD", "--task", tid, "--tenant", tenant_id,
                             "--json"))
    assert recorded["amount"] == "4"
    summary = ok_json(creep_here(server, "ledger", "summary", "--group-by", "tenant_id,task_id",
                            "--task", tid, "--json"))
    assert summary["group_by"] == ["tenant_id", "task_id", "currency"]
    assert [(g["cost"], g["revenue"], g["margin"]) for g in summary["items"]] == [
        ("1.5", "4", "2.5")]
    table = creep_here(server, "ledger", "summary", "--tenant", tenant_id, "--from", "2000-01-01")
    assert table.returncode == 0 and "2.5" in table.stdout
    future = ok_json(creep_here(server, "ledger", "summary", "--tenant", tenant_id, "--from",
                           "2999-01-01T00:00:00+00:00", "--json"))
    assert future["items"] == []
    assert creep_here(server, "ledger", "summary", "--group-by", "colour").returncode == 2
    assert creep_here(server, "ledger", "list", "--from", "yesterday").returncode == 2
    over = creep_here(server, "ledger", "record", "--type", "REVENUE", "--amount", "-1",
                 "--currency", "USD", "--tenant", tenant_id)
    assert over.returncode == 2 and "amount" in over.stderr
    listed = creep_here(server, "ledger", "list", "--tenant", tenant_id, "--type", "REVENUE")
    assert listed.returncode == 0 and "REVENUE" in listed.stdout

    out_csv, out_json = tmp_path / "ledger.csv", tmp_path / "ledger.json"
    assert creep_here(server, "export", "ledger", "--tenant", tenant_id, "-o",
                 str(out_csv)).returncode == 0
    rows = list(csv.DictReader(out_csv.read_text().splitlines()))
    assert [r["entry_type"] for r in rows] == ["COST", "REVENUE"]
    assert creep_here(server, "export", "ledger", "--task", tid, "--format", "json", "-o",
                 str(out_json)).returncode == 0
    assert [e["amount"] for e in orjson.loads(out_json.read_bytes())] == ["1.5", "4"]
    # With an entry_id of the caller's, the same command run again records nothing more.
    once = [creep_here(server, "ledger", "record", "--type", "REFUND", "--amount", "0.5",
                  "--currency", "USD", "--task", tid, "--tenant", tenant_id, "--entry-id",
                  refund_id, "--json") for refund_id in [str(uuid.uuid4())] * 2]
    assert ok_json(once[0]) == ok_json(once[1])
    taken = creep_here(server, "ledger", "record", "--type", "REFUND", "--amount", "0.6",
                  "--currency", "USD", "--task", tid, "--tenant", tenant_id, "--entry-id",
                  ok_json(once[0])["entry_id"])
    assert taken.returncode == 1 and "entry_id" in taken.stderr
    bad_id = creep_here(server, "ledger", "record", "--type", "REFUND", "--amount", "0.6",
                   "--currency", "USD", "--tenant", tenant_id, "--entry-id", "nope")
    assert bad_id.returncode == 2 and "entry_id" in bad_id.stderr


def test_schedule_commands(server: Server) -> None:
    tenant_id, _ = server.tenant()
    added = ok_json(creep_here(server, "schedule", "add", "hourly-report", "--type", "NO_HANDLER",
                          "--every", "3600", "--tenant", tenant_id, "--payload", '{"x": 1}',
                          "--priority", "70", "--json"))
    uid = added["uid"]
    assert added["interval"] == 3600 and added["enabled"] and added["data"] == {"x": 1}
    cron = creep_here(server, "schedule", "add", "nightly", "--type", "NO_HANDLER", "--cron",
                 "0 3 * * *", "--tenant", tenant_id, "--disabled")
    assert cron.returncode == 0 and "cron 0 3 * * *" in cron.stdout
    listed = ok_json(creep_here(server, "schedule", "list", "--tenant", tenant_id, "--json"))
    assert [s["name"] for s in listed] == ["hourly-report", "nightly"]
    enabled = ok_json(creep_here(server, "schedule", "list", "--tenant", tenant_id, "--enabled",
                            "--json"))
    assert [s["uid"] for s in enabled] == [uid]
    table = creep_here(server, "schedule", "list", "--tenant", tenant_id)
    assert table.returncode == 0 and "every 3600 s" in table.stdout
    assert ok_json(creep_here(server, "schedule", "show", uid, "--json"))["priority"] == 70

    assert ok_json(creep_here(server, "schedule", "disable", uid, "--json"))["enabled"] is False
    enabled_again = creep_here(server, "schedule", "enable", uid)
    assert enabled_again.returncode == 0 and "enabled" in enabled_again.stdout
    fired = ok_json(creep_here(server, "schedule", "trigger", uid, "--json"))
    assert fired["trigger_type"] == "manual" and fired["task_id"]
    task = ok_json(creep_here(server, "task", "show", fired["task_id"], "--json"))
    assert task["input_payload"] == {"x": 1}
    history = ok_json(creep_here(server, "schedule", "history", uid, "--json"))
    assert [e["execution_uid"] for e in history] == [fired["execution_uid"]]
    table = creep_here(server, "schedule", "history", uid, "--trigger", "manual")
    assert table.returncode == 0 and fired["task_id"] in table.stdout

    both = creep_here(server, "schedule", "add", "x", "--type", "T", "--cron", "* * * * *",
                 "--every", "5", "--tenant", tenant_id)
    assert both.returncode == 2 and "--cron" in both.stderr
    bad_cron = creep_here(server, "schedule", "add", "x", "--type", "T", "--cron", "61 * * * *",
                     "--tenant", tenant_id)
    assert bad_cron.returncode == 2 and "cron_expr" in bad_cron.stderr
    duplicate = creep_here(server, "schedule", "add", "nightly", "--type", "T", "--every", "60",
                      "--tenant", tenant_id)
    assert duplicate.returncode == 1 and "409" in duplicate.stderr
    deleted = creep_here(server, "schedule", "delete", uid)
    assert deleted.returncode == 0
    gone = creep_here(server, "schedule", "show", uid)
    assert gone.returncode == 1 and "404" in gone.stderr


def test_asset_import_of_a_json_array_file_names_the_formats_it_reads(tmp_path: Path) -> None:
    array = tmp_path / "assets.json"
    array.write_text('[{"sku_category": "RAW_NET", "sku_code": "ip.uk.1"}]\n')
    result = creep_here(None, "asset", "import", str(array), "--tenant", "t1",
                   "--api-url", "http://127.0.0.1:9", "--api-key", "k" * 24)
    assert result.returncode == 2, result.stderr
    # Read as CSV, it was "unknown column(s) '[{\"sku_category\": ...'".
    assert "unknown column" not in result.stderr, result.stderr
    assert ".csv" in result.stderr and ".jsonl" in result.stderr, result.stderr


def test_asset_update_activate_and_sell(server: Server) -> None:
    _, key = server.tenant()
    with Client(server.url, key) as c:
        new = c.create_asset(sku_category="RAW_NET", sku_code="ip.pl.1", status="NEW",
                             project_id="p1")
        aid = new.asset_id
    activated = ok_json(creep_here(server, "asset", "activate", aid, "--json", key=key))
    assert activated["status"] == "READY" and activated["version"] == 2
    changed = ok_json(creep_here(
        server, "asset", "update", aid, "--version", "2", "--set", "health_score=60",
        "--set", "cost_per_lease=0.10", "--set", 'attributes={"geo": "pl"}',
        "--set", "project_id=null", "--set", "currency=EUR", "--json", key=key))
    assert (changed["health_score"], changed["cost_per_lease"], changed["attributes"],
            changed["project_id"], changed["currency"], changed["version"]) == (
        60, "0.10", {"geo": "pl"}, None, "EUR", 3)
    stale = creep_here(server, "asset", "update", aid, "--version", "2", "--set", "health_score=1",
                  key=key)
    assert stale.returncode == 1 and "412" in stale.stderr and "version 3" in stale.stderr
    refused = creep_here(server, "asset", "update", aid, "--set", "health_score=101",
                    "--set", "max_concurrency=0", key=key)
    assert refused.returncode == 2
    assert "health_score" in refused.stderr and "max_concurrency" in refused.stderr
    assert creep_here(server, "asset", "update", aid, "--set", "oops", key=key).returncode == 2
    sold = creep_here(server, "asset", "sell", aid, key=key)
    assert sold.returncode == 0 and f"{aid}: SOLD (version 4)" in sold.stdout
    again = creep_here(server, "asset", "activate", aid, key=key)
    assert again.returncode == 1 and "409" in again.stderr


def test_asset_ban_policy_set_show_list_and_delete(server: Server) -> None:
    tenant_id, key = server.tenant()
    made = ok_json(creep_here(server, "asset", "ban-policy", "set", "RAW_NET", "--max-failures", "2",
                         "--window", "600", "--failure-type", "HTTP_PROBE_FAIL",
                         "--failure-type", "E_403", "--json", key=key))
    assert (made["tenant_id"], made["max_failures"], made["window_seconds"],
            made["failure_event_types"]) == (tenant_id, 2, 600, ["HTTP_PROBE_FAIL", "E_403"])
    said = creep_here(server, "asset", "ban-policy", "set", "GPU", "--max-failures", "5",
                 "--window-seconds", "60", key=key)
    assert said.returncode == 0, said.stderr
    assert f"GPU: ban after 5 failures within 60s (tenant {tenant_id})" in said.stdout
    shown = ok_json(creep_here(server, "asset", "ban-policy", "show", "RAW_NET", "--json", key=key))
    assert shown["failure_event_types"] == ["HTTP_PROBE_FAIL", "E_403"]
    listed = ok_json(creep_here(server, "asset", "ban-policy", "list", "--json", key=key))
    assert [p["sku_category"] for p in listed] == ["GPU", "RAW_NET"]
    table = creep_here(server, "asset", "ban-policy", "list", "--limit", "1", key=key)
    assert table.returncode == 0 and "1 ban policies" in table.stdout
    assert "GPU" in table.stdout and "*_FAIL, TASK_TIMEOUT" in table.stdout

    # Refused values name their field (exit 2); a missing policy is exit 1; an admin key
    # names the tenant.
    refused = creep_here(server, "asset", "ban-policy", "set", "RAW_NET", "--max-failures", "0",
                    "--window", "0", key=key)
    assert refused.returncode == 2
    assert "max_failures" in refused.stderr and "window_seconds" in refused.stderr
    assert ok_json(creep_here(server, "asset", "ban-policy", "show", "RAW_NET", "--json",
                         key=key))["max_failures"] == 2
    missing = creep_here(server, "asset", "ban-policy", "show", "NOPE", key=key)
    assert missing.returncode == 1 and "404" in missing.stderr
    unnamed = creep_here(server, "asset", "ban-policy", "show", "RAW_NET")
    assert unnamed.returncode == 2 and "tenant_id" in unnamed.stderr
    by_admin = ok_json(creep_here(server, "asset", "ban-policy", "list", "--tenant", tenant_id,
                             "--json"))
    assert [p["sku_category"] for p in by_admin] == ["GPU", "RAW_NET"]

    deleted = creep_here(server, "asset", "ban-policy", "delete", "GPU", "--tenant", tenant_id)
    assert deleted.returncode == 0 and "deleted the ban policy of GPU" in deleted.stdout
    again = creep_here(server, "asset", "ban-policy", "delete", "GPU", key=key)
    assert again.returncode == 1 and "404" in again.stderr

    # The policy set by the CLI bans an asset at its second listed failure.
    with Client(server.url, key) as c:
        asset = c.create_asset(sku_category="RAW_NET", sku_code="ip.cz.1")
        c.report_event(asset_id=asset.asset_id, event_type="PAYMENT_FAIL")  # not listed
        c.report_event(asset_id=asset.asset_id, event_type="E_403")
        assert c.get_asset(asset.asset_id).status == "READY"
        c.report_event(asset_id=asset.asset_id, event_type="HTTP_PROBE_FAIL")
        assert c.get_asset(asset.asset_id).status == "BANNED"


def test_asset_import_refuses_integers_beyond_64_bits(server: Server, tmp_path: Path) -> None:
    """An attribute of 2**64 in an import file (a CSV cell, a JSONL row) was read by orjson
    as a float and imported as 1.8446744073709552e+19; it is now refused, named by line,
    and nothing is imported."""
    tenant_id, _ = server.tenant()
    csv_file = tmp_path / "wide.csv"
    csv_file.write_text(HEADER + "RAW_NET,ip.w.1,1,0,uk,18446744073709551616\n")
    jsonl = tmp_path / "wide.jsonl"
    jsonl.write_text('{"sku_category": "RAW_NET", "sku_code": "ip.w.2", '
                     '"attributes": {"n": -9223372036854775809}}\n')
    for path, line in ((csv_file, "line 2: attributes.tier"), (jsonl, "line 1: attributes.n")):
        refused = creep_here(server, "asset", "import", str(path), "--tenant", tenant_id)
        assert refused.returncode == 2 and line in refused.stderr, refused.stderr
        assert "64 bits" in refused.stderr and "nothing imported" in refused.stderr
    assert _codes(server, tenant_id) == []
