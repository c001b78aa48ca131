"""``piigate catalog show`` / ``catalog scan`` (gateway.catalog_cli) on the sample database."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg

from gateway.catalog_cli import main

EXAMPLE_CATALOG = Path(__file__).resolve().parents[2] / "examples" / "catalog.toml"


def raw_values(dsn: str) -> set[str]:
    async def read():
        conn = await asyncpg.connect(dsn)
        try:
            values: set[str] = set()
            for table in ("customers", "orders", "customers_part"):
                for row in await conn.fetch(f"SELECT * FROM {table}"):
                    values |= {str(v) for v in row.values() if v is not None and len(str(v)) >= 4}
            return values
        finally:
            await conn.close()
    return asyncio.run(read())


def test_show_merges_file_tags_and_derived_with_sources(sample_db, capsys):
    assert main(["catalog", "show", "--dsn", sample_db, "--catalog", str(EXAMPLE_CATALOG)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[3:]}
    assert "file:catalog.toml:" in lines["public.customers.ssn"]
    assert "derived:child of public.customers" in lines["public.customers_archive.ssn"]
    assert "derived:view depends on public.customers" in lines["public.order_report.customer_email"]
    assert "public.customers.city" not in lines


def test_show_tags_only_and_json(sample_db, capsys):
    assert main(["catalog", "show", "--dsn", sample_db, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_col = {e["column"]: e for e in doc["entries"]}
    assert by_col["public.customers.ssn"]["source"] == "comment:public.customers.ssn"
    assert by_col["public.customers.ssn"]["sensitivity"] == "critical"
    assert "public.orders.note" not in by_col          # its comment is not a tag
    assert doc["warnings"] == []


def test_show_file_only_without_database(capsys):
    assert main(["catalog", "show", "--catalog", str(EXAMPLE_CATALOG)]) == 0
    out = capsys.readouterr().out
    assert "file only" in out and "public.orders.note" in out


def test_show_bad_file_exits_2_naming_file_and_line(tmp_path, capsys):
    bad = tmp_path / "catalog.toml"
    bad.write_text('[[column]]\ncolumn = "customers.email"\ncategory = "emial"\n')
    assert main(["catalog", "show", "--catalog", str(bad)]) == 2
    assert f"{bad}:3: public.customers.email: unknown category 'emial'" in capsys.readouterr().err


def test_show_warns_about_columns_the_database_lacks(sample_db, tmp_path, capsys):
    typo = tmp_path / "catalog.toml"
    typo.write_text('[[column]]\ncolumn = "customers.emial"\ncategory = "email"\n')
    assert main(["catalog", "show", "--dsn", sample_db, "--catalog", str(typo)]) == 0
    assert "warning: file:catalog.toml:1: public.customers.emial: public.customers has no column 'emial'" \
        in capsys.readouterr().err


def test_unreachable_database_exits_1(capsys):
    assert main(["catalog", "show", "--dsn", "postgresql://nobody:secret@127.0.0.1:1/x"]) == 1
    err = capsys.readouterr().err
    assert "cannot read the database at 127.0.0.1:1/x" in err and "secret" not in err


def test_scan_prints_and_writes_proposals_without_raw_values(sample_db, tmp_path, capsys):
    out_file = tmp_path / "proposals.toml"
    assert main(["catalog", "scan", "--dsn", sample_db, "--out", str(out_file)]) == 0
    table = capsys.readouterr().out
    assert main(["catalog", "scan", "--dsn", sample_db, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "public.orders.note" in table and "free_text" in table and "evidence:" in table
    assert {d["column"] for d in doc} >= {"public.customers.ssn", "public.orders.note"}
    everything = table + json.dumps(doc) + out_file.read_text()
    assert [v for v in raw_values(sample_db) if v in everything] == []


def test_scan_needs_a_database(capsys):
    assert main(["catalog", "scan"]) == 2
    assert "needs a database" in capsys.readouterr().err


def test_show_reads_upstream_and_catalog_file_from_the_gateway_config(sample_db, tmp_path, capsys):
    (tmp_path / "catalog.toml").write_text(EXAMPLE_CATALOG.read_text())
    config = tmp_path / "piigate.toml"
    config.write_text(f'[upstream]\nhost = "{sample_db.host}"\nport = {sample_db.port}\n'
                      f'user = "{sample_db.user}"\ndatabase = "{sample_db.dbname}"\n\n'
                      '[catalog]\nfile = "catalog.toml"\n')
    assert main(["catalog", "show", "--config", str(config), "--json"]) == 0
    by_col = {e["column"]: e["source"] for e in json.loads(capsys.readouterr().out)["entries"]}
    assert by_col["public.orders.note"].startswith("file:catalog.toml:")
    assert by_col["public.customers_archive.ssn"] == "derived:child of public.customers"


def test_bad_config_exits_2(tmp_path, capsys):
    config = tmp_path / "piigate.toml"
    config.write_text('[upstream]\nport = "x"\n')
    assert main(["catalog", "show", "--config", str(config)]) == 2
    assert str(config) in capsys.readouterr().err


def test_show_notes_tags_the_file_overrides(sample_db, tmp_path, capsys):
    cat = tmp_path / "catalog.toml"
    cat.write_text('[[column]]\ncolumn = "customers.phone"\ncategory = "phone"\nsensitivity = "high"\n')
    assert main(["catalog", "show", "--dsn", sample_db, "--catalog", str(cat)]) == 0
    captured = capsys.readouterr()
    assert "public.customers.phone is phone/high in the file but tagged phone/medium" in captured.err
    row = next(line for line in captured.out.splitlines() if line.startswith("public.customers.phone "))
    assert "high" in row and "file:catalog.toml:1" in row
