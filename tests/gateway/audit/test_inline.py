"""The statement hot path of the trail: prepared record templates (``append_template``)
and records written with the next write (``later``). Whatever the path, the file
must hold the same chain ``verify`` accepts, with checkpoints, rotation and failure
handled as on the ordinary path."""
from __future__ import annotations

import asyncio
import os
import time

import orjson
import pytest

from gateway.audit import AuditTrail, AuditUnavailable, records
from gateway.audit import chain as chain_mod
from gateway.audit.chain import Chain, RecordTemplate, verify
from gateway.audit.query import iter_records, read_trail

from .conftest import decision, file_config, trail_files


def _complete(i: int) -> dict:
    return records.TrustedEvent(type="statement.complete", session="s1", fingerprint=f"fp{i}",
                                status="ok", rows=i, bytes=10 * i, duration_ms=0.25, tx_status="I")


EVENTS = [
    {"type": "statement.decision", "session": "abc", "user": "bench", "roles": ["a", "b"],
     "sql": "SELECT 100% FROM t WHERE x = $1", "columns": [], "grant_id": None, "param_count": 1},
    {"type": "statement.decision", "user": "zoë", "sql": "SELECT \"naïve\" FROM \"t%s\" -- %d",
     "columns": [{"column": "public.t.a", "category": "email", "usages": ["returned", "predicate"]}],
     "reasons": ["a", "b"], "request_id": "r-1"},
    {"type": "a"},                                  # keys before and after prev/seq/ts
    {"type": "zz", "aaa": 1, "pz": 2, "sz": [], "tz": {"q": None}},
]


@pytest.mark.parametrize("event", EVENTS, ids=range(len(EVENTS)))
def test_a_template_renders_exactly_what_sealing_the_event_gives(event):
    by_dict, by_template = Chain("gw-1"), Chain("gw-1")
    template = RecordTemplate(event, "gw-1")
    assert template.usable
    for i in range(3):
        now = time.time() + i
        _, line = by_dict.seal_line(dict(event), now)
        assert by_template.seal_template(template, now) == line
        assert by_template.head == by_dict.head
    rec = orjson.loads(line)
    assert rec["seq"] == 3 and rec["instance"] == "gw-1" and rec["hash"] == chain_mod.record_hash(rec)


@pytest.mark.parametrize("instance,session", [("gw-1", "6fd817106dd7305b"), ("h%st:5432", 'ses"sion\\zoë %d')])
def test_a_completion_record_renders_exactly_what_sealing_the_event_gives(instance, session):
    from gateway.audit.trail import _completion_event
    by_dict, direct = Chain(instance), Chain(instance)
    rows = [(3, "fp1", "ok", 1, 66, 0.25, "I"), (None, "fp%d", "42501", 0, 0, 12.0, "E"),
            (7, "fp", "ok", 2 ** 40, 1, 1e-05, "T")]
    for i in range(3):
        now = time.time() + i + 0.999999
        _, line = by_dict.seal_line(_completion_event(session, rows[:i + 1]), now)
        assert direct.seal_completion(session, rows[:i + 1], now) == line
        assert direct.head == by_dict.head
    rec = orjson.loads(line)
    assert records.outcomes(rec)[2]["rows"] == 2 ** 40 and rec["hash"] == chain_mod.record_hash(rec)


def test_an_event_that_contains_a_marker_is_not_templated(monkeypatch):
    monkeypatch.setattr(chain_mod.secrets, "token_hex", lambda n: "f00d")
    template = RecordTemplate({"type": "x", "note": "piigate-f00d-seq"}, "gw-1")
    assert not template.usable


async def test_templates_and_later_records_form_one_verifiable_chain(tmp_path):
    path = tmp_path / "t.jsonl"
    async with AuditTrail(file_config(path, fsync="group", group_ms=5)) as trail:
        templates = [trail.template(decision(i)) for i in range(3)]
        for i in range(30):
            trail.append_template(templates[i % 3])
            trail.later(_complete(i))
    res = verify(read_trail(trail_files(path)))
    assert res.ok, res.summary()
    recs = [r for r in iter_records(read_trail(trail_files(path)))
            if r["type"] in ("statement.decision", "statement.complete")]
    # each completion record lands after its decision and before the next one
    assert [r["type"] for r in recs] == ["statement.decision", "statement.complete"] * 30
    assert [r["rows"] for r in recs[1::2]] == list(range(30))
    # the templated record is the event, sanitized: literals out of the text
    assert all("WHERE id = $1" in r["sql"] for r in recs[0::2])


async def test_a_later_record_is_written_within_group_ms_without_another_statement(tmp_path):
    path = tmp_path / "l.jsonl"
    async with AuditTrail(file_config(path, fsync="group", group_ms=10)) as trail:
        trail.append_template(trail.template(decision(1)))
        trail.later(_complete(7))
        await asyncio.sleep(0.1)
        data = trail_files(path)[0].read_bytes()
        assert b'"type":"statement.complete"' in data
        assert not trail.file.dirty                   # and fsynced with it


async def test_flush_writes_later_records(tmp_path):
    path = tmp_path / "f.jsonl"
    async with AuditTrail(file_config(path, fsync="none")) as trail:
        trail.later(_complete(3))
        await trail.flush()
        assert b'"rows":3' in trail_files(path)[0].read_bytes()


async def test_templates_take_checkpoints_and_rotation_in_stride(tmp_path, seed_b64):
    path = tmp_path / "r.jsonl"
    cfg = file_config(path, seed_b64, fsync="none", checkpoint_every=7, rotate_bytes=4096)
    async with AuditTrail(cfg) as trail:
        template = trail.template(decision(2))
        for i in range(200):
            trail.append_template(template)
            if i % 2:
                trail.later(_complete(i))
    files = trail_files(path)
    assert len(files) > 3
    res = verify(read_trail(files))
    assert res.ok, res.summary()
    recs = list(iter_records(read_trail(files)))
    assert sum(r["type"] == "statement.decision" for r in recs) == 200
    assert sum(r["type"] == "statement.complete" for r in recs) == 100
    assert sum(r["type"] == "checkpoint" for r in recs) >= 200 // 7


async def test_a_template_append_fails_closed_when_the_file_cannot_be_written(tmp_path):
    path = tmp_path / "x.jsonl"
    trail = await AuditTrail(file_config(path, fsync="none", retry_ms=60000)).start()
    try:
        template = trail.template(decision(1))
        trail.append_template(template)
        os.close(trail.file.fd)                      # the disk goes away under the writer
        r, w = os.pipe()
        os.close(w)
        trail.file.fd = r                             # a read-only descriptor: write() fails
        trail.later(_complete(1))
        with pytest.raises(AuditUnavailable, match="file sink"):
            trail.append_template(template, required=True)
        assert not trail.healthy
        with pytest.raises(AuditUnavailable):
            trail.append_template(template, required=True)   # fails fast until the retry is due
        trail.append_template(template, required=False)     # not required: counted as failed
        assert trail.stats["failed_records"] >= 1
    finally:
        await trail.close()


async def test_an_untemplatable_event_is_still_appended(tmp_path, monkeypatch):
    path = tmp_path / "u.jsonl"
    async with AuditTrail(file_config(path, fsync="none")) as trail:
        monkeypatch.setattr(chain_mod.secrets, "token_hex", lambda n: "f00d")
        template = trail.template({"type": "statement.decision", "note": "piigate-f00d-ts"})
        assert not template.usable
        trail.append_template(template)
    recs = [r for r in iter_records(read_trail(trail_files(path))) if r["type"] == "statement.decision"]
    assert [r["note"] for r in recs] == ["piigate-f00d-ts"]
    assert verify(read_trail(trail_files(path))).ok


async def test_outcomes_are_batched_into_one_record_per_session(tmp_path):
    from gateway.audit.trail import COMPLETION_FIELDS
    path = tmp_path / "o.jsonl"
    async with AuditTrail(file_config(path, fsync="group", group_ms=5)) as trail:
        template = trail.template(decision(1))
        for i in range(30):
            seq = trail.append_template(template)
            trail.completed(f"s{i % 3}", (seq, "fp", "ok", i, 10, 0.5, "I"))
        await asyncio.sleep(0.05)                     # the syncer writes them within group_ms
        recs = [r for r in iter_records(read_trail(trail_files(path)))]
        outcomes = [r for r in recs if r["type"] == "statement.complete"]
        assert sorted(r["session"] for r in outcomes) == ["s0", "s1", "s2"]
        for r in outcomes:
            k = int(r["session"][1])
            assert r["fields"] == list(COMPLETION_FIELDS)     # rows, not a dict per outcome
            assert [o["rows"] for o in records.outcomes(r)] == list(range(k, 30, 3))
            assert set(records.outcomes(r)[0]) == set(COMPLETION_FIELDS)
        decision_seqs = {r["seq"] for r in recs if r["type"] == "statement.decision"}
        assert {o["decision_seq"] for r in outcomes for o in records.outcomes(r)} == decision_seqs
    assert verify(read_trail(trail_files(path))).ok


async def _until(condition, seconds: float = 5.0) -> bool:
    """Poll ``condition`` while the loop runs (the syncer answers on the loop; how
    soon depends on how loaded the machine is, not on the code)."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return True
        await asyncio.sleep(0.005)
    return condition()


@pytest.mark.parametrize("syncer", ["process", "thread"])
async def test_a_failed_group_fsync_fails_closed_then_recovers_in_a_new_file(tmp_path, monkeypatch, syncer):
    """fsync="group" runs in the fsync process (or, where it cannot run, on the file
    sink's own thread): when it fails, the sink is failed at once (statements under
    policy are refused, /health says so), and the trail recovers in a new file after
    retry_ms; the chain still verifies."""
    from gateway.audit import sinks as sinks_mod
    monkeypatch.setattr(sinks_mod, "PROCESS_SYNCER", syncer == "process")
    path = tmp_path / "s.jsonl"
    trail = await AuditTrail(file_config(path, fsync="group", group_ms=5, retry_ms=200)).start()
    try:
        assert trail.file._process_syncer is (syncer == "process")
        template = trail.template(decision(1))
        trail.append_template(template, required=True)
        assert await _until(lambda: not trail.file.dirty) and trail.healthy     # fsynced

        real_fsync = os.fsync
        if syncer == "process":
            trail.file._syncer.inject_failure(5)
        else:
            def broken_fsync(fd):
                raise OSError(5, "Input/output error")
            monkeypatch.setattr(sinks_mod.os, "fsync", broken_fsync)
        trail.append_template(template, required=True)
        assert await _until(lambda: not trail.healthy)
        assert "fsync" in trail.health()["last_error"]
        assert "Input/output error" in trail.health()["last_error"]
        with pytest.raises(AuditUnavailable):
            trail.append_template(template, required=True)
        if syncer == "process":
            trail.file._syncer.inject_failure(0)
        else:
            monkeypatch.setattr(sinks_mod.os, "fsync", real_fsync)
        await asyncio.sleep(0.25)                             # retry_ms
        seq = trail.append_template(template, required=True)
        assert seq is not None and trail.healthy
        assert len(trail_files(path)) == 2                    # recovered in a new file
        assert await _until(lambda: not trail.file.dirty)
    finally:
        await trail.close()
    assert verify(read_trail(trail_files(path))).ok


async def test_the_fsync_process_ending_fails_the_sink_closed_until_a_new_one_runs(tmp_path):
    """The fsync process killed (by an operator, by the OOM killer): nothing would
    make records durable any more, so the sink fails at once (statements under
    policy refused); it recovers in a new segment with a new fsync process."""
    path = tmp_path / "k.jsonl"
    trail = await AuditTrail(file_config(path, fsync="group", group_ms=5, retry_ms=200)).start()
    try:
        template = trail.template(decision(1))
        trail.append_template(template, required=True)
        assert await _until(lambda: not trail.file.dirty)
        first = trail.file._syncer._proc
        first.kill()
        assert await _until(lambda: not trail.healthy)
        assert "fsync process" in trail.health()["last_error"]
        with pytest.raises(AuditUnavailable):
            trail.append_template(template, required=True)
        await asyncio.sleep(0.25)                             # retry_ms
        assert trail.append_template(template, required=True) is not None and trail.healthy
        assert trail.file._syncer._proc is not first and trail.file._syncer.is_alive()
        assert await _until(lambda: not trail.file.dirty)
    finally:
        syncer = trail.file._syncer
        await trail.close()
    assert not syncer.is_alive()                              # closing the trail ends it
    assert verify(read_trail(trail_files(path))).ok


async def test_the_group_syncer_fsyncs_within_group_ms_and_then_idles(tmp_path):
    path = tmp_path / "w.jsonl"
    async with AuditTrail(file_config(path, fsync="group", group_ms=20)) as trail:
        f = trail.file
        template = trail.template(decision(1))
        for burst in range(3):
            before = f.fsyncs
            for _ in range(50):
                trail.append_template(template)
            assert f.dirty
            assert await _until(lambda: not f.dirty)
            assert 1 <= f.fsyncs - before <= 2
        await asyncio.sleep(0.1)
        assert not f._sync_armed                              # idle: nothing to do, no wake-ups


async def test_completion_records_that_cannot_be_written_fail_the_sink(tmp_path):
    path = tmp_path / "c.jsonl"
    trail = await AuditTrail(file_config(path, fsync="group", group_ms=5, retry_ms=60000)).start()
    try:
        template = trail.template(decision(1))
        seq = trail.append_template(template, required=True)
        trail.completed("s1", (seq, "fp", "ok", 1, 10, 0.5, "I"))
        os.close(trail.file.fd)
        r, w = os.pipe()
        os.close(w)
        trail.file.fd = r                             # write() fails from now on
        await asyncio.sleep(0.05)                     # the timer tries to write the outcome
        assert not trail.healthy
        with pytest.raises(AuditUnavailable):
            trail.append_template(template, required=True)
    finally:
        await trail.close()
