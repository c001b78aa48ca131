"""The gateway's TOML config: a good file parses to the values it says; every kind of
bad file is a ConfigError that names the file, the line and the key with what was
expected; `piigate check` exits 0 or 2 with the message on stderr."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config
from gateway.protocol.scram import Verifier, make_verifier

ROOT = Path(__file__).resolve().parents[2]
VERIFIER = make_verifier("pw", 64, b"0123456789abcdef")

GOOD = f"""\
# a complete config
[server]
listen = "0.0.0.0:7432"
max_message_size = 4096
startup_timeout = 5
idle_timeout = 300.5
tcp_keepalive = false
instance_id = "gw-1"

[upstream]
host = "db.internal"
port = 5433
user = "piigate"
password = "upstream-secret"
database = "app"
sslmode = "verify-full"
sslrootcert = "ca.pem"
connect_timeout = 3

[users.alice]
password_verifier = "{VERIFIER}"
roles = ["support", "analyst"]
databases = ["app"]

[users.bob]
password_verifier = "{VERIFIER}"

[catalog]
comment_tags = false
refresh_interval = 30

[redis]
url = "redis://127.0.0.1:6379/0"
prefix = "gw:"
"""


def write(tmp_path: Path, text: str, name: str = "piigate.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(str(path))
    return str(exc.value)


def line_of(text: str, needle: str) -> int:
    for i, line in enumerate(textwrap.dedent(text).splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the config text")


def test_good_config_parses(tmp_path):
    (tmp_path / "ca.pem").write_text("")          # named by upstream.sslrootcert
    cfg = load_config(str(write(tmp_path, GOOD)))
    s, u = cfg.server, cfg.upstream
    assert (s.host, s.port, s.max_message_size, s.startup_timeout_s, s.idle_timeout_s) == \
        ("0.0.0.0", 7432, 4096, 5.0, 300.5)
    assert s.tcp_keepalive is False and s.instance_id == "gw-1" and s.tls_cert is None
    assert (u.host, u.port, u.user, u.password, u.database, u.sslmode, u.connect_timeout_s) == \
        ("db.internal", 5433, "piigate", "upstream-secret", "app", "verify-full", 3.0)
    assert set(cfg.users) == {"alice", "bob"}
    assert cfg.users["alice"].roles == frozenset({"support", "analyst"})
    assert cfg.users["alice"].databases == frozenset({"app"})
    assert cfg.users["bob"].roles == frozenset() and cfg.users["bob"].databases == frozenset()
    assert cfg.users["alice"].verifier == Verifier.parse(VERIFIER)
    assert cfg.catalog_comment_tags is False and cfg.catalog_refresh_s == 30.0
    assert cfg.redis_url == "redis://127.0.0.1:6379/0" and cfg.redis_prefix == "gw:"
    assert cfg.sections == {}
    assert cfg.resolve_path("ca.pem") == str(tmp_path / "ca.pem")
    assert cfg.resolve_path("/abs/ca.pem") == "/abs/ca.pem"


def test_empty_config_gives_defaults():
    cfg = parse_config("")
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 6432)
    assert (cfg.upstream.host, cfg.upstream.port, cfg.upstream.user) == ("127.0.0.1", 5432, "postgres")
    assert cfg.upstream.sslmode == "disable" and cfg.users == {}
    assert cfg.server.max_message_size == 64 << 20


def test_sections_of_other_owners_are_kept_raw():
    cfg = parse_config('[audit]\nanything = "kept raw for its owner"\n[jit]\nx = 1\n')
    assert cfg.sections == {"audit": {"anything": "kept raw for its owner"}, "jit": {"x": 1}}


def test_password_env_is_read_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PIIGATE_TEST_CFG_PW", "from-env")
    cfg = load_config(str(write(tmp_path, '[upstream]\npassword_env = "PIIGATE_TEST_CFG_PW"\n')))
    assert cfg.upstream.password == "from-env"


def test_tls_and_catalog_files(tmp_path):
    from .test_server import make_cert
    (tmp_path / "cat.toml").write_text("")
    cert, key = make_cert(tmp_path)
    Path(cert).rename(tmp_path / "cert.pem")
    Path(key).rename(tmp_path / "key.pem")
    cfg = load_config(str(write(tmp_path, """\
        [server]
        tls_cert = "cert.pem"
        tls_key = "key.pem"
        require_tls = true
        [catalog]
        file = "cat.toml"
        """)))
    # TLS files resolve against the config file's folder
    assert (cfg.server.tls_cert, cfg.server.tls_key, cfg.server.require_tls) == \
        (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), True)
    assert cfg.resolve_path(cfg.catalog_file) == str(tmp_path / "cat.toml")


# (config text, key named, line needle (None: the error has no line), words expected)
BAD = [
    ("[server]\nlisten = \"127.0.0.1:6432\"\nbogus = 1\n",
     "server.bogus", "bogus", ["unknown key", "listen"]),
    ("[upstream]\nport = \"x\"\n", "upstream.port", "port", ["expected an integer", "'x'"]),
    ("[upstream]\nport = 70000\n", "upstream.port", "port", ["between 1 and 65535", "70000"]),
    ("[upstream]\nport = true\n", "upstream.port", "port", ["expected an integer"]),
    ("[upstream]\nsslmode = \"sometimes\"\n", "upstream.sslmode", "sslmode", ["verify-full", "'sometimes'"]),
    ("[upstream]\nhost = 5\n", "upstream.host", "host", ["expected a string"]),
    ("[upstream]\nconnect_timeout = \"soon\"\n", "upstream.connect_timeout", "connect_timeout",
     ["expected a number"]),
    ("[server]\nrequire_tls = \"yes\"\n", "server.require_tls", "require_tls", ["expected true or false"]),
    ("[server]\nmax_message_size = 10\n", "server.max_message_size", "max_message_size", ["at least 1024"]),
    ("[server]\nlisten = \"localhost\"\n", "server.listen", "listen", ["HOST:PORT", "'localhost'"]),
    ("[server]\nlisten = \"127.0.0.1:http\"\n", "server.listen", "listen", ["HOST:PORT"]),
    ("[server]\nlisten = \"127.0.0.1:99999\"\n", "server.listen", "listen", ["HOST:PORT"]),
    ("[server]\nlisten = 6432\n", "server.listen", "listen", ["expected a string"]),
    ("[server]\ntls_cert = \"c.pem\"\n", "server.tls_cert", "tls_cert", ["tls_key", "together"]),
    ("# tls\n[server]\ntls_key = \"k.pem\"\n", "server.tls_cert", "[server]", ["together"]),
    ("[server]\nrequire_tls = true\n", "server.require_tls", "require_tls", ["tls_cert"]),
    ("# bob\n[users.bob]\nroles = [\"app\"]\n", "users.bob.password_verifier", "[users.bob]",
     ["missing", "piigate passwd"]),
    ("[users.bob]\npassword_verifier = \"hunter2\"\n", "users.bob.password_verifier", "password_verifier",
     ["not a SCRAM-SHA-256 verifier", "piigate passwd"]),
    (f"[users.bob]\npassword_verifier = \"{VERIFIER}\"\nroles = \"app\"\n", "users.bob.roles", "roles",
     ["list of strings"]),
    (f"[users.bob]\npassword_verifier = \"{VERIFIER}\"\npassword = \"x\"\n", "users.bob.password",
     "password =", ["unknown key"]),
    ("[users]\nbob = \"x\"\n", "users.bob", "bob", ["expected a table"]),
    ("server = 5\n", "server", "server", ["expected a table"]),
    ("[upstream]\npassword_env = \"PIIGATE_TEST_SURELY_UNSET_VAR\"\n", "upstream.password_env",
     "password_env", ["PIIGATE_TEST_SURELY_UNSET_VAR", "not set"]),
    ("[catalog]\nfile = \"no-such-catalog.toml\"\n", "catalog.file", "file", ["no-such-catalog.toml",
                                                                             "does not exist"]),
    ("[policy]\nfile = \"no-such-policy.toml\"\n", "policy.file", "file", ["does not exist"]),
    ("[redis]\nurl = \"redis://x\"\nport = 1\n", "redis.port", "port", ["unknown key"]),
]


@pytest.mark.parametrize("text,key,needle,words", BAD, ids=[b[1] + ":" + "/".join(b[3]) for b in BAD])
def test_bad_config_names_file_line_and_key(tmp_path, text, key, needle, words):
    msg = error_of(tmp_path, text)
    path = str(tmp_path / "piigate.toml")
    where = f"{path}:{line_of(text, needle)}" if needle else path
    assert msg.startswith(f"{where}: {key}: "), msg
    for w in words:
        assert w in msg, (w, msg)


def test_error_line_is_in_the_right_section(tmp_path):
    # "port" appears in [server]-less config twice: the error must point at [upstream]'s
    text = "[redis]\nurl = \"redis://h:1\"\n\n[upstream]\nhost = \"h\"\nport = \"bad\"\n"
    msg = error_of(tmp_path, text)
    assert msg.startswith(f"{tmp_path / 'piigate.toml'}:6: upstream.port: "), msg


def test_bad_toml_names_file_and_line(tmp_path):
    msg = error_of(tmp_path, "[server]\nlisten = \"127.0.0.1:1\"\nthis is not toml\n")
    assert msg.startswith(str(tmp_path / "piigate.toml") + ": not valid TOML")
    assert "line 3" in msg


def test_duplicate_key_is_bad_toml(tmp_path):
    msg = error_of(tmp_path, "[upstream]\nport = 1\nport = 2\n")
    assert "not valid TOML" in msg and "line 3" in msg


def test_unknown_section_names_file_and_section(tmp_path):
    msg = error_of(tmp_path, "[server]\nlisten = \"127.0.0.1:1\"\n\n[bogus]\nx = 1\n")
    assert f"{tmp_path / 'piigate.toml'}" in msg and "bogus" in msg
    assert "unknown section" in msg and "upstream" in msg      # lists the known ones


def test_unknown_section_names_its_line(tmp_path):
    msg = error_of(tmp_path, "[server]\nlisten = \"127.0.0.1:1\"\n\n[bogus]\nx = 1\n")
    assert msg.startswith(f"{tmp_path / 'piigate.toml'}:4: bogus: "), msg


def test_missing_verifier_in_a_section_on_line_one_names_the_line(tmp_path):
    msg = error_of(tmp_path, "[users.bob]\nroles = [\"app\"]\n")
    assert msg.startswith(f"{tmp_path / 'piigate.toml'}:1: users.bob.password_verifier: "), msg


@pytest.mark.parametrize("text", ["[server]\nstartup_timeout = -1\n", "[upstream]\nconnect_timeout = 0\n"])
def test_non_positive_timeouts_are_refused(tmp_path, text):
    error_of(tmp_path, text)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(str(tmp_path / "missing.toml"))
    assert str(exc.value).startswith(f"{tmp_path / 'missing.toml'}: cannot read the config file")


# --- piigate check -------------------------------------------------------------------------

def run_check(path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "check", "--config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_check_good_config_exits_0(tmp_path):
    (tmp_path / "ca.pem").write_text("")
    done = run_check(write(tmp_path, GOOD))
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout and "2 users" in done.stdout
    assert "Traceback" not in done.stderr


def test_check_warns_about_verifiers_pgjdbc_refuses(tmp_path):
    """Valid, but pgJDBC refuses SCRAM with fewer than 4096 iterations: check says
    so (and still exits 0); a verifier from `piigate passwd` has 4096."""
    from gateway.protocol.scram import make_verifier
    text = (GOOD + f'\n[users.weak]\npassword_verifier = "{make_verifier("pw", iterations=64)}"\nroles = []\n'
            + f'\n[users.strong]\npassword_verifier = "{make_verifier("pw")}"\nroles = []\n')
    (tmp_path / "ca.pem").write_text("")
    done = run_check(write(tmp_path, text))
    assert done.returncode == 0, done.stderr
    assert "users.weak.password_verifier has 64 iterations" in done.stderr
    assert "piigate passwd" in done.stderr and "strong" not in done.stderr


@pytest.mark.parametrize("text,expected", [
    ("[upstream]\nport = \"x\"\n", ":2: upstream.port: expected an integer"),
    ("[users.bob]\npassword_verifier = \"hunter2\"\n", ":2: users.bob.password_verifier: not a SCRAM"),
    ("[server\n", ": not valid TOML"),
])
def test_check_bad_config_exits_2_with_message_on_stderr(tmp_path, text, expected):
    path = write(tmp_path, text)
    done = run_check(path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"piigate: {path}{expected}"), done.stderr
    assert "Traceback" not in done.stderr


def test_check_missing_file_exits_2(tmp_path):
    done = run_check(tmp_path / "nope.toml")
    assert done.returncode == 2
    assert "cannot read the config file" in done.stderr and "Traceback" not in done.stderr


def test_passwd_makes_a_verifier_the_config_accepts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "passwd", "--password", "pw",
                           "--iterations", "64"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    verifier = done.stdout.strip()
    assert "pw" not in verifier.split("$", 1)[1].split(":", 1)[0]     # the password is not in it
    cfg = load_config(str(write(tmp_path, f'[users.carol]\npassword_verifier = "{verifier}"\n')))
    assert cfg.users["carol"].verifier.iterations == 64


def test_check_refuses_missing_tls_files(tmp_path):
    path = write(tmp_path, '# tls\n[server]\ntls_cert = "no-cert.pem"\ntls_key = "no-key.pem"\n')
    done = run_check(path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"piigate: {path}:3: server.tls_cert: "), done.stderr
