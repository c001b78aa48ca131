"""SIGHUP reloads the policy of a running `piigate serve`: new decisions follow the
new file at once, sessions whose user it now treats differently are ended, a file
that does not load changes nothing (the error names file and line), and each reload
is in the audit trail."""
from __future__ import annotations

import re
import signal
import time

import orjson
import psycopg
import pytest

from .conftest import PASSWORD
from .serve_process import free_port, start_serve, stop_serve
from .test_enforcement import POLICY, _policy_config

ANALYST_UNRESTRICTED = POLICY + """
[[rule]]
name = "analysts-trusted-now"
roles = ["analyst"]
actions = ["*"]
categories = ["*"]
effect = "allow"
"""


@pytest.fixture
def served(pg_server, sample_db, tmp_path):
    port = free_port()
    audit = tmp_path / "audit"
    audit.mkdir()
    text = _policy_config(pg_server, sample_db.dbname, tmp_path)
    text = text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1)
    text += f'\n[audit]\nsinks = ["file"]\nfile = "{audit / "audit.jsonl"}"\nfsync = "group"\n'
    (tmp_path / "gw.toml").write_text(text)
    log = tmp_path / "gateway.log"
    proc = start_serve(tmp_path / "gw.toml", port, log=log)
    try:
        yield proc, f"postgresql://ann:{PASSWORD}@127.0.0.1:{port}/{sample_db.dbname}", tmp_path
    finally:
        stop_serve(proc)


def _wait_for(path, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace")
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.05)


def _email_of_7(conn) -> str:
    return conn.execute("SELECT email FROM customers WHERE id = 7").fetchone()[0]


def test_sighup_reloads_the_policy(served):
    proc, dsn, work = served
    with psycopg.connect(dsn, autocommit=True) as before:
        assert _email_of_7(before).startswith("***@")             # masked for an analyst
        (work / "policy.toml").write_text(ANALYST_UNRESTRICTED)
        proc.send_signal(signal.SIGHUP)
        log = _wait_for(work / "gateway.log", "reload: policy")
        assert "1 session(s) ended" in log, log
        # the open session was under policy and is not any more: ended, with a reason
        with pytest.raises(psycopg.OperationalError) as ended:
            _email_of_7(before)
        assert "policy was reloaded" in str(ended.value)
    with psycopg.connect(dsn, autocommit=True) as after:
        assert _email_of_7(after) == "user07@example.invalid"      # the new rule decides
        # a broken file changes nothing: same policy, same session, error with its line
        (work / "policy.toml").write_text(ANALYST_UNRESTRICTED + "\n[[rule]]\nname = 3\n")
        proc.send_signal(signal.SIGHUP)
        log = _wait_for(work / "gateway.log", "was NOT changed")
        assert re.search(r"policy\.toml:\d+: rule #4 needs a `name`", log), log
        assert _email_of_7(after) == "user07@example.invalid"
    assert proc.poll() is None
    # back to the first policy: analysts are masked again for new sessions
    (work / "policy.toml").write_text(POLICY)
    proc.send_signal(signal.SIGHUP)
    _wait_for(work / "gateway.log", "session(s) ended", timeout=10)
    time.sleep(0.3)
    with psycopg.connect(dsn, autocommit=True) as again:
        assert _email_of_7(again).startswith("***@")
    proc.terminate()
    assert proc.wait(15) == 0
    records = [orjson.loads(line) for f in sorted((work / "audit").glob("*.jsonl"))
               for line in f.read_bytes().splitlines() if line.strip()]
    reloads = [(r["status"], r.get("sessions_ended")) for r in records if r["type"] == "policy.reload"]
    assert reloads == [("ok", 1), ("failed", None), ("ok", 0)], reloads


def test_a_statement_prepared_before_a_reload_is_decided_under_the_new_policy(served):
    proc, dsn, work = served
    stricter = POLICY.replace('email = "partial_email"', 'email = "redact"')
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(2):      # psycopg prepares it server-side on its second run
            assert conn.execute("SELECT email FROM customers WHERE id = %s", (7,),
                                prepare=True).fetchone()[0].startswith("***@")
        (work / "policy.toml").write_text(stricter)
        proc.send_signal(signal.SIGHUP)
        log = _wait_for(work / "gateway.log", "reload: policy")
        assert "0 session(s) ended" in log, log       # ann is under policy before and after
        try:
            value = conn.execute("SELECT email FROM customers WHERE id = %s", (7,), prepare=True).fetchone()[0]
        except psycopg.errors.InsufficientPrivilege as e:
            assert "prepare" in str(e)                # refused: "prepare it again"
        else:
            assert not value.startswith("***@") and "example.invalid" not in value, value
        conn.execute("DEALLOCATE ALL")
        value = conn.execute("SELECT email FROM customers WHERE id = %s", (7,)).fetchone()[0]
        assert "example.invalid" not in value and not value.startswith("***@"), value
