"""Startup parameters: which settings a client may send in its startup packet, and
what the upstream gets (sans-IO).

Every startup parameter but ``user``, ``database``, ``replication`` and the
protocol's own ``_pq_.*`` is a server setting, and so is every ``-c name=value``
(or ``--name=value``) inside ``options``. For a session the gateway only relays
(an unrestricted principal) they all pass as sent: the gateway has nothing to
keep consistent, and clients' connection strings keep working. For a session
under PII policy each setting is judged on its own, wherever it came from:

- harmless settings that drivers and BI tools send (DateStyle, TimeZone,
  timeouts, planner knobs, ...) pass;
- ``search_path`` passes and becomes the session's starting path, so the
  gateway resolves names exactly as PostgreSQL will;
- ``standard_conforming_strings`` passes only as ``on`` (the analyser reads
  string literals that way);
- anything else (``role``, ``session_authorization``, unknown settings) is
  refused: it could change how SQL is read or whose rights it runs with.

``replication`` is refused for everybody: a replication connection does not
speak SQL the gateway could analyse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from catalog.model import read_quoted_identifier

#: settings that pass for sessions under policy: they change formatting, timing
#: or planning, never how a statement is read or resolved
HARMLESS = frozenset({
    "application_name", "client_encoding", "datestyle", "timezone",
    "extra_float_digits", "intervalstyle", "bytea_output", "statement_timeout",
    "lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout", "geqo",
    "default_transaction_isolation", "default_transaction_read_only",
    "default_transaction_deferrable", "synchronous_commit", "work_mem", "maintenance_work_mem",
    "temp_buffers", "jit", "plan_cache_mode", "random_page_cost", "effective_cache_size",
    "xmloption", "xmlbinary", "default_text_search_config", "array_nulls", "timezone_abbreviations",
    "gin_fuzzy_search_limit", "cursor_tuple_fraction", "from_collapse_limit", "join_collapse_limit",
})
#: prefixes of harmless planner and locale settings
HARMLESS_PREFIXES = ("enable_", "lc_", "parallel_", "geqo_")

#: why a setting is refused for sessions under policy
WHY_REFUSED = {
    "role": "it changes the database role statements run as",
    "session_authorization": "it changes the database role statements run as",
    "standard_conforming_strings": "it changes how string literals are read",
}
REPLICATION_REFUSED = "replication connections bypass SQL analysis"
_ON = ("on", "true", "yes", "1")


class StartupRefused(Exception):
    """The startup packet asks for something the gateway will not do: the message
    names the parameter and why; ``hint`` says what to change."""
    sqlstate = "42501"

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True, slots=True)
class StartupSettings:
    """What to send upstream (besides user and database) and the search_path the
    session starts with, when the client set one."""
    upstream: dict[str, str]
    search_path: str | None = None


def split_options(text: str) -> list[str]:
    """``options`` split into words as PostgreSQL does (pg_split_opts): words are
    separated by whitespace, and a backslash takes the next character literally."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    escaped = False
    for ch in text:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = in_word = True
        elif ch.isspace():
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            word.append(ch)
            in_word = True
    if escaped:
        raise StartupRefused('startup parameter "options" ends with a lone backslash',
                             "escape a backslash in options as \\\\")
    if in_word:
        words.append("".join(word))
    return words


def parse_options(text: str) -> list[tuple[str, str]]:
    """The settings in ``options``: ``-c name=value``, ``-cname=value`` and
    ``--name=value`` (dashes in the name read as underscores, as PostgreSQL does).
    Other command-line switches are refused: they are for the server's own start."""
    words = split_options(text)
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            setting = word[2:]
        elif word == "-c":
            if i + 1 >= len(words):
                raise StartupRefused('startup parameter "options": "-c" needs a name=value after it',
                                     "write options as -c name=value")
            i += 1
            setting = words[i]
        elif word.startswith("-c"):
            setting = word[2:]
        else:
            raise StartupRefused(f'startup parameter "options": "{word}" is not a setting; only '
                                 "-c name=value and --name=value are accepted through piigate",
                                 "write options as -c name=value")
        name, eq, value = setting.partition("=")
        if not eq or not name:
            raise StartupRefused(f'startup parameter "options": "{setting}" is not name=value',
                                 "write options as -c name=value")
        out.append((name.replace("-", "_"), value))
        i += 1
    return out


def split_identifier_list(value: str) -> list[str] | None:
    """A list setting such as search_path as PostgreSQL reads it (SplitIdentifierString):
    comma separated; unquoted names case folded, "quoted" ones kept as written ("" is
    a quote). None when it is not such a list (PostgreSQL refuses it too)."""
    names: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == '"':
            quoted = read_quoted_identifier(value, i)
            if quoted is None:
                return None                        # unterminated quote
            names.append(quoted[0])
            i = quoted[1]
        else:
            j = i
            while j < n and value[j] != "," and not value[j].isspace():
                j += 1
            if j > i:
                names.append(value[i:j].lower())
            i = j
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] != ",":
            return None                            # two names without a comma
        i += 1
    return names


def catalog_not_first(names: list[str]) -> bool:
    """A search_path that puts pg_catalog after another schema: functions and
    operators there then shadow the built-in ones, which the analyser does not
    follow (it resolves them in pg_catalog first, as PostgreSQL does by default)."""
    rest = [n for n in names if n != "pg_temp"]
    return "pg_catalog" in rest and rest[0] != "pg_catalog"


def startup_settings(params: Mapping[str, str], *, restricted: bool) -> StartupSettings:
    """Judge a startup packet's settings (see the module's doc). ``restricted``:
    the session is under PII policy. Raises StartupRefused."""
    search_path: str | None = None
    upstream: dict[str, str] = {}
    # PostgreSQL applies the settings in options first, then the other parameters
    from_options: list[tuple[str, str]] = []
    direct: list[tuple[str, str]] = []
    for key, value in params.items():
        lk = key.lower()
        if lk == "replication":
            raise StartupRefused(f'startup parameter "{key}" is not allowed through piigate: '
                                 f"{REPLICATION_REFUSED}", "connect without replication=...")
        if lk in ("user", "database") or lk.startswith("_pq_."):
            continue
        if not restricted:
            upstream[key] = value                     # relayed as sent
        if lk != "options":
            direct.append((key, value))
            continue
        try:
            from_options.extend(parse_options(value))
        except StartupRefused:
            if restricted:
                raise
            # unrestricted: PostgreSQL says what it makes of it
    settings = [(name, name.lower(), value) for name, value in from_options + direct]
    for name, lk, value in settings:
        if lk == "search_path":
            search_path = value
        if not restricted:
            continue
        if lk == "search_path":
            names = split_identifier_list(value)
            if names is None or catalog_not_first(names):
                raise StartupRefused(f'startup setting "{name}" = {value!r} is not allowed through piigate: '
                                     + ("it is not a list of schema names" if names is None else
                                        "it puts pg_catalog after another schema, where functions and "
                                        "operators could shadow the built-in ones"),
                                     "leave pg_catalog out of search_path (PostgreSQL searches it first) "
                                     "or put it first")
        if (lk == "search_path" or lk in HARMLESS or (lk.startswith(HARMLESS_PREFIXES) and lk != "lc_messages")
                or (lk == "standard_conforming_strings" and value.strip().lower() in _ON)):
            upstream.pop(lk, None)
            upstream[lk] = value                      # one key per setting, the last one wins
        else:
            why = WHY_REFUSED.get(lk, "it is not one the gateway knows to be harmless for users "
                                      "under PII policy")
            raise StartupRefused(f'startup setting "{name}" is not allowed through piigate: {why}',
                                 "remove it from the connection string (PGOPTIONS, options=..., "
                                 "server_settings); set it with SET after connecting, if policy allows")
    if restricted:
        # the analyser reads string literals with it on: a database or role default
        # of off must not apply to sessions under policy (startup settings win)
        upstream["standard_conforming_strings"] = "on"
    return StartupSettings(upstream, search_path)
