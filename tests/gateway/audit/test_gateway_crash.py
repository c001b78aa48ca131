"""kill -9 of the real gateway process under load: no forwarded statement lacks its
decision record, and the trail verifies up to the last complete record."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest

from gateway.audit.chain import verify
from gateway.audit.query import iter_records, read_trail

from ..serve_process import free_port, serve_config, start_serve

POLICY = """
[defaults]
pii_read = "mask"
"""


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has ended; its new parent reaps it or not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.timeout(120)
def test_kill_9_under_load_loses_no_record_of_a_forwarded_statement(pg_server, sample_db, tmp_path):
    port = free_port()
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "audit").mkdir()
    (tmp_path / "gw.toml").write_text(serve_config(pg_server, sample_db.dbname, port, {"ann": "analyst"}, """
[policy]
file = "policy.toml"
[audit]
sinks = ["file"]
file = "audit/audit.jsonl"
fsync = "group"
"""))
    proc = start_serve(tmp_path / "gw.toml", port)
    answered: dict[int, int] = {}
    stop = threading.Event()
    try:
        def client(n: int) -> None:
            count = 0
            try:
                with psycopg.connect(f"postgresql://ann:pw@127.0.0.1:{port}/{sample_db.dbname}",
                                     autocommit=True) as conn:
                    while not stop.is_set():
                        conn.execute("SELECT count(*) FROM orders WHERE id > %s", (count,)).fetchone()
                        count += 1              # this statement was forwarded and answered
                        answered[n] = count
            except psycopg.Error:
                pass                            # the gateway died under us: expected

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        syncers = _children(proc.pid)          # the group commit's fsync process
        assert syncers, "no fsync process (fsync = group)"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
        # it ends with the gateway (its socket to the gateway closed): nothing is left running
        deadline = time.monotonic() + 10
        while any(_running(c) for c in syncers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(c) for c in syncers), "the fsync process outlived the gateway"
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    total = sum(answered.values())
    assert total > 50, f"too little load to mean anything ({total} statements)"
    files = sorted((tmp_path / "audit").glob("*.jsonl"))
    res = verify(read_trail(files))
    assert res.ok, res.summary()
    decisions = [r for r in iter_records(read_trail(files))
                 if r["type"] == "statement.decision" and r.get("user") == "ann"]
    # every answered statement was forwarded after its decision record was written
    assert len(decisions) >= total, f"{total} statements answered, {len(decisions)} decision records"
