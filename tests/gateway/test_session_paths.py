"""How the session reads a search_path: what the analyser reports for SET, and the
identifier list of a startup parameter; "$user" is the upstream role."""
from __future__ import annotations

import pytest

from gateway.session import _parse_guc_search_path, _parse_search_path


@pytest.mark.parametrize("value,path", [
    ('"$user", public', ("gw_user", "public")),
    ('foo, "Bar"', ("foo", "Bar")),
    ("public", ("public",)),
    ("", None),
    (None, None),
])
def test_set_search_path_as_the_analyser_reports_it(value, path):
    assert _parse_search_path(value, "gw_user") == path


def test_user_is_dropped_only_when_the_upstream_role_is_unknown():
    assert _parse_search_path('"$user", public', "") == ("public",)


@pytest.mark.parametrize("value,path", [
    ('"$user", public', ("gw_user", "public")),
    ("$user,public", ("gw_user", "public")),
    ("Foo, BAR", ("foo", "bar")),                    # unquoted names are case folded
    ('"Foo", "a""b"', ("Foo", 'a"b')),               # quoted ones are not; "" is a quote
    ('"a,b", c', ("a,b", "c")),                      # a comma inside quotes is part of the name
    ("  s2 ,\tpublic  ", ("s2", "public")),
    ('"unterminated', None),
    ("a b", None),                                   # not a list: PostgreSQL refuses it too
])
def test_startup_search_path_is_read_like_postgres(value, path):
    assert _parse_guc_search_path(value, "gw_user") == path


@pytest.mark.parametrize("sql,path", [
    ("SET search_path = 'scratch,,public'", ("scratch,,public",)),   # one schema, as PostgreSQL reads it
    ("SET search_path = 's2, public'", ("s2, public",)),
    ("SET search_path TO 's2', public", ("s2", "public")),
    ('SET search_path = "A", b', ("A", "b")),
    ("SET search_path = '\"$user\", public'", ('"$user", public',)),
    ('SET search_path = "$user", public', ("gw_user", "public")),
    ("SET search_path = 'default'", ("default",)),
])
def test_each_element_of_a_set_search_path_is_one_name(sql, path):
    """PostgreSQL quotes each element of SET search_path as one identifier: a string
    with commas in it names one schema. The gateway split it on the commas and
    resolved names with schemas PostgreSQL never searched (found by red-teaming)."""
    from gateway.analysis import analyze
    from gateway.schema import LiveSchema
    from gateway.session import _parse_search_path
    (facts,) = analyze(sql, LiveSchema())
    assert _parse_search_path(facts.setting[1], "gw_user") == path
