"""Startup parameters: the options parser (PostgreSQL's word splitting and switch
syntax) and which settings pass for restricted and unrestricted sessions."""
from __future__ import annotations

import pytest

from gateway.protocol.startup import StartupRefused, parse_options, split_options, startup_settings


@pytest.mark.parametrize("text,words", [
    ("", []),
    ("   ", []),
    ("-c a=1", ["-c", "a=1"]),
    ("  -c   a=1\t--b=2 ", ["-c", "a=1", "--b=2"]),
    (r"-c search_path=a,\ b", ["-c", "search_path=a, b"]),
    (r"-c x=\\", ["-c", "x=\\"]),
    (r"\ ", [" "]),
])
def test_split_options_like_postgres(text, words):
    assert split_options(text) == words


def test_a_lone_trailing_backslash_is_refused():
    with pytest.raises(StartupRefused, match="lone backslash"):
        split_options("-c a=b\\")


@pytest.mark.parametrize("text,settings", [
    ("-c search_path=x", [("search_path", "x")]),
    ("-csearch_path=x", [("search_path", "x")]),
    ("--search-path=x", [("search_path", "x")]),
    ("-c statement_timeout=5s --DateStyle=ISO", [("statement_timeout", "5s"), ("DateStyle", "ISO")]),
    ("-c a=", [("a", "")]),
    ("-c a=b=c", [("a", "b=c")]),
])
def test_parse_options(text, settings):
    assert parse_options(text) == settings


@pytest.mark.parametrize("text,words", [
    ("-B 100", '"-B" is not a setting'),
    ("-c", '"-c" needs a name=value'),
    ("-c novalue", '"novalue" is not name=value'),
    ("--=x", '"=x" is not name=value'),
    ("search_path=x", '"search_path=x" is not a setting'),
])
def test_malformed_options_are_refused(text, words):
    with pytest.raises(StartupRefused) as exc:
        parse_options(text)
    assert words in str(exc.value)


# --------------------------------------------------------------- unrestricted sessions

def test_unrestricted_sessions_pass_everything_as_sent():
    params = {"user": "u", "database": "d", "options": "-c search_path=s1 -B 10", "role": "r",
              "some_guc": "1", "_pq_.x": "y", "application_name": "a"}
    got = startup_settings(params, restricted=False)
    assert got.upstream == {"options": "-c search_path=s1 -B 10", "role": "r", "some_guc": "1",
                            "application_name": "a"}
    assert got.search_path is None       # options did not parse: PostgreSQL will say what it thinks


def test_the_starting_search_path_is_known_for_unrestricted_sessions_too():
    got = startup_settings({"options": "-c search_path=s1,public"}, restricted=False)
    assert got.search_path == "s1,public"
    # a parameter is applied after options, as PostgreSQL does
    got = startup_settings({"search_path": "s2", "options": "-c search_path=s1"}, restricted=False)
    assert got.search_path == "s2"


@pytest.mark.parametrize("restricted", [False, True])
def test_replication_is_refused_for_everyone(restricted):
    with pytest.raises(StartupRefused, match="replication connections bypass SQL analysis"):
        startup_settings({"replication": "database"}, restricted=restricted)


# ----------------------------------------------------------------- restricted sessions

def test_restricted_sessions_pass_harmless_settings_from_anywhere():
    params = {"user": "u", "DateStyle": "ISO", "options": "-c statement_timeout=5s --enable-seqscan=off",
              "application_name": "app"}
    got = startup_settings(params, restricted=True)
    assert got.upstream == {"statement_timeout": "5s", "enable_seqscan": "off", "datestyle": "ISO",
                            "application_name": "app", "standard_conforming_strings": "on"}
    assert "options" not in got.upstream    # re-sent as parameters the gateway has read


def test_restricted_search_path_passes_and_is_the_one_postgres_applies():
    got = startup_settings({"options": "-c search_path=s1", "Search_Path": "s2, public"}, restricted=True)
    assert got.upstream == {"search_path": "s2, public", "standard_conforming_strings": "on"}
    assert got.search_path == "s2, public"


@pytest.mark.parametrize("value", ["on", "ON", "true", "1"])
def test_restricted_standard_conforming_strings_on_passes(value):
    got = startup_settings({"options": f"-c standard_conforming_strings={value}"}, restricted=True)
    assert got.upstream == {"standard_conforming_strings": "on"}


def test_restricted_sessions_always_start_with_standard_conforming_strings_on():
    """A database or role default of off must not apply: the analyser reads string
    literals with it on, and a startup setting wins over those defaults."""
    assert startup_settings({}, restricted=True).upstream == {"standard_conforming_strings": "on"}
    assert startup_settings({}, restricted=False).upstream == {}


@pytest.mark.parametrize("params,words", [
    ({"options": "-c standard_conforming_strings=off"}, "changes how string literals are read"),
    ({"standard_conforming_strings": "off"}, "changes how string literals are read"),
    ({"options": "-c role=postgres"}, "changes the database role"),
    ({"session_authorization": "postgres"}, "changes the database role"),
    ({"options": "--session-authorization=postgres"}, "changes the database role"),
    ({"some_guc": "1"}, '"some_guc" is not allowed'),
    ({"options": "-c log_statement=none"}, '"log_statement" is not allowed'),
    ({"lc_messages": "de_DE.UTF-8"}, '"lc_messages" is not allowed'),
    ({"options": "-B 100"}, '"-B" is not a setting'),
])
def test_restricted_sessions_refuse_what_could_change_reading_or_rights(params, words):
    with pytest.raises(StartupRefused) as exc:
        startup_settings(params, restricted=True)
    assert words in str(exc.value)
    assert exc.value.sqlstate == "42501"
    assert exc.value.hint
