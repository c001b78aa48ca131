"""catalog.loader: the catalog file, comment tags, merging and derivation."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from catalog.loader import (
    CatalogError, build_catalog, derive_catalog, format_column_ref, load_catalog_file,
    merge_catalogs, missing_columns, overridden_tags, parse_catalog_text, parse_column_ref, parse_comment_tag,
    tag_entry, view_select_items,
)
from catalog.model import Catalog, CatalogEntry, ColumnRef, RelationRef, Sensitivity
from gateway.schema import MATVIEW, PARTITIONED, TABLE, VIEW, Column, LiveSchema, Relation

DATA = Path(__file__).resolve().parents[1] / "data" / "catalog"
ROOT = Path(__file__).resolve().parents[2]
BAD_FILES = sorted((DATA / "bad").glob("*.toml"))


# ------------------------------------------------------------------ the file


def test_good_file_loads_every_entry_with_its_line():
    cf = load_catalog_file(DATA / "good.toml")
    got = {str(e.column): (e.category, e.sensitivity, e.source) for e in cf.entries}
    assert got == {
        "public.customers.email": ("email", Sensitivity.MEDIUM, "file:good.toml:6"),
        "public.customers.ssn": ("ssn", Sensitivity.CRITICAL, "file:good.toml:12"),
        'crm.Members.loyalty_no': ("loyalty_id", Sensitivity.HIGH, "file:good.toml:16"),
        "public.staff.badge": ("badge", Sensitivity.CRITICAL, "file:good.toml:20"),
        "public.customers.dob": ("dob", Sensitivity.MEDIUM, "file:good.toml:25"),
    }
    email = cf.entries[0]
    assert (email.owner, email.description) == ("crm-team", "contact address")
    assert cf.categories == {"loyalty_id": Sensitivity.HIGH, "badge": Sensitivity.LOW}
    # the source line really is the entry's [[column]] header
    lines = (DATA / "good.toml").read_text().splitlines()
    for e in cf.entries:
        assert lines[int(e.source.rsplit(":", 1)[1]) - 1].strip() == "[[column]]"


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_file_error_names_file_line_and_problem(path: Path):
    expect = re.match(r"# expect: (\d+): (.*)", path.read_text().splitlines()[0])
    assert expect, f"{path.name}: first line must be '# expect: LINE: message'"
    with pytest.raises(CatalogError) as info:
        load_catalog_file(path)
    err = info.value
    assert err.file == str(path)
    assert err.line == int(expect.group(1)), str(err)
    assert expect.group(2) in err.message
    assert str(err).startswith(f"{path}:{expect.group(1)}: ")


def test_bad_corpus_covers_each_kind_of_error():
    kinds = {p.stem for p in BAD_FILES}
    assert {"unknown_category", "bad_sensitivity", "malformed_ref", "duplicate",
            "not_toml", "user_category_undeclared"} <= kinds


def test_unreadable_file_says_so():
    with pytest.raises(CatalogError) as info:
        load_catalog_file(DATA / "does-not-exist.toml")
    assert info.value.line is None and "cannot read the catalog file" in str(info.value)


def test_empty_file_is_an_empty_catalog():
    assert parse_catalog_text("", "empty.toml").entries == ()


@pytest.mark.parametrize("text, ref", [
    ("customers.email", ColumnRef("public", "customers", "email")),
    ("Sales.Customers.Email", ColumnRef("sales", "customers", "email")),
    ('crm."Members".loyalty_no', ColumnRef("crm", "Members", "loyalty_no")),
    ('"my.schema"."a""b".c', ColumnRef("my.schema", 'a"b', "c")),
    (" public.t.c ", ColumnRef("public", "t", "c")),
])
def test_parse_column_ref(text, ref):
    assert parse_column_ref(text) == ref
    assert parse_column_ref(format_column_ref(ref)) == ref


@pytest.mark.parametrize("text", ["t", "a.b.c.d", "a..c", "t.", ".t.c", '"unterminated.c',
                                  'a."".c', "a.b c.d", "a.1b.c", '"a"b.c'])
def test_parse_column_ref_rejects(text):
    with pytest.raises(ValueError):
        parse_column_ref(text)


def test_example_catalog_is_valid():
    cf = load_catalog_file(ROOT / "examples" / "catalog.toml")
    assert len(cf.entries) >= 8


# ------------------------------------------------------------------- tags

TAG_CASES = [json.loads(line) for line in (DATA / "comment_tags.jsonl").read_text().splitlines()
             if line.strip()]


@pytest.mark.parametrize("case", TAG_CASES, ids=[c["comment"][:30] or "empty" for c in TAG_CASES])
def test_parse_comment_tag(case):
    if case["expect"] == "error":
        with pytest.raises(ValueError, match="malformed PII tag"):
            parse_comment_tag(case["comment"])
        return
    got = parse_comment_tag(case["comment"])
    if case["expect"] is None:
        assert got is None
    else:
        category, sens = case["expect"]
        assert got == (category, Sensitivity.parse(sens) if sens else None)


def test_tag_entry_defaults_and_source():
    col = ColumnRef("public", "customers", "ssn")
    e = tag_entry(col, "pii:ssn")
    assert e == CatalogEntry(col, "ssn", Sensitivity.CRITICAL, source="comment:public.customers.ssn")
    assert tag_entry(col, "pii:loyalty_id", {"loyalty_id": Sensitivity.LOW}).sensitivity == Sensitivity.LOW
    assert tag_entry(col, "pii:loyalty_id").sensitivity == Sensitivity.MEDIUM
    assert tag_entry(col, "free_text (may contain PII)") is None
    with pytest.raises(CatalogError, match=r"COMMENT ON COLUMN public\.customers\.ssn: malformed"):
        tag_entry(col, "pii:ssn:extreme")


# ------------------------------------------------------------------ merge

C = "public.customers"


def entry(ref: str, category: str, source: str, sens: Sensitivity | None = None) -> CatalogEntry:
    from catalog.model import DEFAULT_SENSITIVITY
    return CatalogEntry(ColumnRef.parse(ref), category,
                        sens or DEFAULT_SENSITIVITY.get(category, Sensitivity.MEDIUM), source=source)


def test_merge_file_wins_over_tags_and_keeps_sources():
    tags = [entry(f"{C}.email", "email", "comment:public.customers.email"),
            entry(f"{C}.phone", "phone", "comment:public.customers.phone"),
            entry(f"{C}.note", "free_text", "comment:public.customers.note")]
    file = [entry(f"{C}.phone", "phone", "file:catalog.toml:4", Sensitivity.HIGH),
            entry(f"{C}.ssn", "ssn", "file:catalog.toml:8")]
    cat = merge_catalogs(file, tags)
    assert {str(c): (e.category, e.sensitivity.name, e.source) for c, e in cat.entries.items()} == {
        f"{C}.email": ("email", "MEDIUM", "comment:public.customers.email"),
        f"{C}.phone": ("phone", "HIGH", "file:catalog.toml:4"),
        f"{C}.note": ("free_text", "MEDIUM", "comment:public.customers.note"),
        f"{C}.ssn": ("ssn", "CRITICAL", "file:catalog.toml:8"),
    }
    assert overridden_tags(file, tags) == [
        "file:catalog.toml:4: public.customers.phone is phone/high in the file but tagged "
        "phone/medium in the database (the file wins)"]
    # the version follows content, not order
    assert cat.version == merge_catalogs(list(reversed(file)), list(reversed(tags))).version
    assert cat.version != merge_catalogs(file[1:], tags).version


# ----------------------------------------------------------------- derive


def cols(*names: str) -> tuple[Column, ...]:
    return tuple(Column(n, "text") for n in names)


def rel(name: str, kind: str, columns: tuple[str, ...], parents=(), viewdef=None, lineage=None,
        schema="public") -> Relation:
    return Relation(RelationRef(schema, name), kind, cols(*columns),
                    tuple(RelationRef("public", p) for p in parents), viewdef, lineage or {})


CUSTOMER_COLS = ("id", "full_name", "email", "ssn", "city")
BASE = merge_catalogs([], [entry(f"{C}.email", "email", "comment:public.customers.email"),
                           entry(f"{C}.ssn", "ssn", "comment:public.customers.ssn"),
                           entry(f"{C}.full_name", "name", "comment:public.customers.full_name")])


def derived(catalog: Catalog) -> dict[str, tuple[str, str]]:
    return {str(c): (e.category, e.source) for c, e in catalog.entries.items()
            if e.source.startswith("derived:")}


def test_derive_inheritance_children_and_partitions_any_depth():
    schema = LiveSchema.of([
        rel("customers", TABLE, CUSTOMER_COLS),
        rel("customers_archive", TABLE, CUSTOMER_COLS + ("archived_at",), parents=["customers"]),
        rel("customers_p", PARTITIONED, ("id", "email", "city"), parents=["customers"]),
        rel("customers_p_2024", TABLE, ("id", "email", "city"), parents=["customers_p"]),
        rel("unrelated", TABLE, ("email",)),
    ])
    assert derived(derive_catalog(BASE, schema)) == {
        "public.customers_archive.email": ("email", "derived:child of public.customers"),
        "public.customers_archive.ssn": ("ssn", "derived:child of public.customers"),
        "public.customers_archive.full_name": ("name", "derived:child of public.customers"),
        "public.customers_p.email": ("email", "derived:child of public.customers"),
        "public.customers_p_2024.email": ("email", "derived:child of public.customers_p"),
    }


def test_derive_views_with_lineage_attribute_each_output_column():
    email, ssn, city = (ColumnRef("public", "customers", c) for c in ("email", "ssn", "city"))
    schema = LiveSchema.of([
        rel("customers", TABLE, CUSTOMER_COLS),
        rel("v", VIEW, ("contact", "both", "city"), viewdef="SELECT ...",
            lineage={"contact": frozenset({email}), "both": frozenset({email, ssn}),
                     "city": frozenset({city})}),
        rel("mv", MATVIEW, ("c",), viewdef="SELECT ...",
            lineage={"c": frozenset({ColumnRef("public", "v", "both")})}),
    ])
    got = derive_catalog(BASE, schema)
    assert derived(got) == {
        "public.v.contact": ("email", "derived:view of public.customers.email"),
        "public.v.both": ("ssn", "derived:view of public.customers.ssn"),  # most sensitive wins
        "public.mv.c": ("ssn", "derived:view of public.v.both"),           # a view of a view
    }
    assert got.get(ColumnRef("public", "v", "both")).sensitivity == Sensitivity.CRITICAL


def test_derive_generated_columns_from_the_columns_they_are_computed_from():
    ssn, city = (ColumnRef("public", "customers", c) for c in ("ssn", "city"))
    schema = LiveSchema.of([
        rel("customers", TABLE, CUSTOMER_COLS + ("ssn_norm", "city_upper"),
            lineage={"ssn_norm": frozenset({ssn}), "city_upper": frozenset({city})}),
        rel("c2", TABLE, ("id", "ssn_norm"), parents=("customers",)),
    ])
    got = derive_catalog(BASE, schema)
    assert derived(got) == {
        "public.customers.ssn_norm": ("ssn", "derived:generated from public.customers.ssn"),
        "public.c2.ssn_norm": ("ssn", "derived:child of public.customers"),   # reached in a later round
    }


def test_derive_view_columns_missing_from_lineage_fall_back_to_the_definition():
    email = ColumnRef("public", "customers", "email")
    schema = LiveSchema.of([
        rel("customers", TABLE, CUSTOMER_COLS),
        rel("v", VIEW, ("contact", "secret", "city"),
            viewdef=" SELECT c.email AS contact, c.ssn AS secret, c.city FROM public.customers c;",
            lineage={"contact": frozenset({email}), "city": frozenset()}),
    ])
    assert derived(derive_catalog(BASE, schema)) == {
        "public.v.contact": ("email", "derived:view of public.customers.email"),
        "public.v.secret": ("ssn", "derived:view depends on public.customers"),
    }


def test_derive_views_without_lineage_are_treated_conservatively():
    order_report = (" SELECT o.id AS order_id,\n    c.email AS customer_email,\n    o.amount\n"
                    "   FROM public.orders o\n     JOIN public.customers c ON c.id = o.customer_id;")
    schema = LiveSchema.of([
        rel("customers", TABLE, CUSTOMER_COLS),
        rel("orders", TABLE, ("id", "customer_id", "amount")),
        rel("contacts", VIEW, ("id", "full_name", "email"),
            viewdef=" SELECT customers.id, customers.full_name, customers.email FROM public.customers;"),
        rel("order_report", VIEW, ("order_id", "customer_email", "amount"), viewdef=order_report),
        rel("wrapped", VIEW, ("id", "contact", "j", "label"),
            viewdef=" SELECT DISTINCT ON (c.id) c.id, upper(c.email) AS contact, row_to_json(c.*) AS j,"
                    " 'ssn' AS label FROM public.customers c;"),
        rel("unioned", VIEW, ("who", "n"),
            viewdef=" SELECT o.id::text AS who, 1 AS n FROM public.orders o"
                    " UNION ALL SELECT c.ssn AS who, 2 FROM public.customers c;"),
        rel("with_query", VIEW, ("a", "b"),
            viewdef=" WITH x AS (SELECT customers.id, customers.city FROM public.customers)"
                    " SELECT x.id AS a, x.city AS b FROM x;"),
        rel("orders_only", VIEW, ("id", "label"),
            viewdef=" SELECT orders.id, 'email' AS label FROM public.orders;"),
        rel("lookalike", VIEW, ("email",), viewdef=" SELECT x.email FROM public.customers_old x;"),
    ])
    dep = "derived:view depends on public.customers"
    unattributed = dep + " (definition not attributed)"
    assert derived(derive_catalog(BASE, schema)) == {
        "public.contacts.full_name": ("name", dep),
        "public.contacts.email": ("email", dep),
        "public.order_report.customer_email": ("email", dep),
        "public.wrapped.contact": ("email", dep),           # inside a function call
        "public.wrapped.j": ("ssn", dep),                   # a whole row: the most sensitive column
        "public.unioned.who": ("ssn", dep),                 # from the second branch of the union
        "public.with_query.a": ("ssn", unattributed),       # cannot split: every column
        "public.with_query.b": ("ssn", unattributed),
    }


def test_view_select_items_per_output_column():
    assert view_select_items(" SELECT a.x, f(a.y, 'p, q') AS z FROM t a UNION SELECT 1, 2;", 2) == \
        [["a.x", "1"], ["f(a.y, 'p, q') AS z", "2"]]
    assert view_select_items(" SELECT DISTINCT ON (a.x) a.x FROM t a", 1) == [["a.x"]]
    assert view_select_items(" SELECT extract(year FROM a.d) AS y FROM t a", 1) == [["extract(year FROM a.d) AS y"]]
    assert view_select_items(" SELECT a.x FROM t a", 2) is None                # count mismatch
    assert view_select_items(" (SELECT 1) UNION (SELECT 2)", 1) is None
    assert view_select_items(" VALUES (1)", 1) is None
    assert view_select_items(" SELECT 'unterminated FROM t", 1) is None


def test_derive_never_replaces_an_explicit_entry():
    child = rel("customers_archive", TABLE, CUSTOMER_COLS, parents=["customers"])
    schema = LiveSchema.of([rel("customers", TABLE, CUSTOMER_COLS), child])
    explicit = entry("public.customers_archive.email", "free_text", "file:c.toml:3")
    cat = build_catalog([explicit], BASE.entries.values(), schema)
    assert cat.get(explicit.column) == explicit
    assert cat.get(ColumnRef("public", "customers_archive", "ssn")).source.startswith("derived:")


def test_missing_columns_names_the_source_line():
    schema = LiveSchema.of([rel("customers", TABLE, CUSTOMER_COLS)])
    warnings = missing_columns([entry(f"{C}.emial", "email", "file:c.toml:3"),
                                entry("public.custmers.email", "email", "file:c.toml:7"),
                                entry(f"{C}.email", "email", "file:c.toml:11")], schema)
    assert len(warnings) == 2
    assert warnings[0].startswith("file:c.toml:3: public.customers.emial: public.customers has no column 'emial'")
    assert warnings[1].startswith("file:c.toml:7: public.custmers.email: relation public.custmers does not exist")
