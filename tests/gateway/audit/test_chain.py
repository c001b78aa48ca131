"""Tamper evidence: every kind of tampering is detected and the first bad record named.

Each test writes a real trail with AuditTrail (file sink), tampers with it the way an
attacker with write access to the files would, and verifies.
"""
from __future__ import annotations

import base64
import os

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.chain import GENESIS, load_signing_key, record_hash, split_lines, verify
from gateway.audit.query import read_trail

from .conftest import as_lines, dicts, file_config, load_lines, rechain, trail_files, write_trail


@pytest.fixture
async def trail(tmp_path, seed_b64):
    """60 decisions, a signed checkpoint every 10 records, one file."""
    cfg = file_config(tmp_path / "audit.jsonl", seed_b64, checkpoint_every=10)
    await write_trail(cfg, 60)
    recs = dicts(load_lines(tmp_path / "audit.jsonl"))
    return recs, cfg.signing_key.public_key(), cfg.signing_key


def idx_of(recs, type_, nth=0):
    return [i for i, r in enumerate(recs) if r["type"] == type_][nth]


def first_decision_after(recs, i):
    return next(k for k in range(i, len(recs)) if recs[k]["type"] == "statement.decision")


async def test_intact_trail_verifies_with_signatures(trail):
    recs, pub, _ = trail
    res = verify(as_lines(recs), pub)
    assert res.ok, res.summary()
    assert res.records == len(recs) and res.signatures_checked
    assert res.checkpoints == sum(r["type"] == "checkpoint" for r in recs) >= 6
    assert recs[0]["type"] == "segment.start" and recs[0]["prev"] == GENESIS
    assert recs[-1]["type"] == "checkpoint" and recs[-1]["reason"] == "shutdown"
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))


async def test_altered_field_is_named(trail):
    recs, pub, _ = trail
    k = first_decision_after(recs, 20)
    recs[k]["user"] = "someone-else"
    res = verify(as_lines(recs), pub)
    assert not res.ok
    assert (res.first_bad.kind, res.first_bad.line) == ("altered", k + 1)
    assert res.records == k


async def test_altered_record_with_recomputed_hash_is_named(trail):
    recs, pub, _ = trail
    k = first_decision_after(recs, 20)
    recs[k]["effect"] = "allow"
    recs[k]["hash"] = record_hash(recs[k])
    res = verify(as_lines(recs), pub)
    nxt = k + 1
    if recs[nxt]["type"] == "checkpoint":
        # the signed checkpoint vouches for its range; which record in it changed cannot
        # be told (the attacker may have recomputed from any of them): the range is named
        prev_cp = max(i for i in range(k) if recs[i]["type"] == "checkpoint")
        assert (res.first_bad.kind, res.first_bad.line) == ("altered", prev_cp + 2)
        assert f"signed checkpoint at trail.jsonl:{nxt + 1}" in res.first_bad.message
    else:
        assert (res.first_bad.kind, res.first_bad.line) == ("altered", k + 1)


async def test_altered_record_with_recomputed_hash_mid_range_is_named(trail):
    recs, pub, _ = trail
    k = first_decision_after(recs, 13)
    assert recs[k + 1]["type"] != "checkpoint"
    recs[k]["effect"] = "allow"
    recs[k]["hash"] = record_hash(recs[k])
    res = verify(as_lines(recs), pub)
    assert (res.first_bad.kind, res.first_bad.line) == ("altered", k + 1)


async def test_rewritten_chain_is_caught_by_the_next_signed_checkpoint(trail):
    recs, pub, _ = trail
    k = first_decision_after(recs, 23)
    recs[k]["effect"] = "allow"
    forged = rechain(recs, k)         # every later prev/hash recomputed, no key to re-sign
    res = verify(as_lines(forged), pub)
    # the old signature no longer matches the recomputed checkpoint
    next_cp = next(i for i in range(k, len(recs)) if recs[i]["type"] == "checkpoint")
    assert (res.first_bad.kind, res.first_bad.line) == ("forged_signature", next_cp + 1)
    prev_cp = max(i for i in range(k) if recs[i]["type"] == "checkpoint")
    assert f"since the previous checkpoint (trail.jsonl:{prev_cp + 1})" in res.first_bad.message
    # an attacker who keeps the old checkpoint untouched breaks the link to it instead
    kept = forged[:next_cp] + recs[next_cp:]
    res = verify(as_lines(kept), pub)
    assert (res.first_bad.kind, res.first_bad.line) == ("altered", prev_cp + 2)


async def test_inserted_record_is_named(trail):
    recs, pub, _ = trail
    k = first_decision_after(recs, 30)
    fake = dict(recs[k], session="s-fake", user="ghost", prev=recs[k - 1]["hash"])
    fake["hash"] = record_hash(fake)
    tampered = recs[:k] + [fake] + recs[k:]
    res = verify(as_lines(tampered), pub)
    assert (res.first_bad.kind, res.first_bad.line) == ("inserted", k + 1)


async def test_inserted_record_with_rechained_tail_is_caught(trail):
    recs, pub, _ = trail
    k = first_decision_after(recs, 30)
    fake = dict(recs[k], session="s-fake", user="ghost")
    tampered = rechain(recs[:k] + [fake] + recs[k:], k)
    res = verify(as_lines(tampered), pub)
    assert (res.first_bad.kind, res.first_bad.line) == ("inserted", k + 2)   # seq used twice


async def test_deleted_record_is_named(trail):
    recs, pub, _ = trail
    k = first_decision_after(recs, 40)
    tampered = recs[:k] + recs[k + 1:]
    res = verify(as_lines(tampered), pub)
    assert (res.first_bad.kind, res.first_bad.line) == ("deleted", k + 1)
    assert f"seq {recs[k]['seq']}" in res.first_bad.message


async def test_reordered_records_are_named(trail):
    recs, pub, _ = trail
    k = first_decision_after(recs, 12)
    tampered = recs[:k] + [recs[k + 1], recs[k]] + recs[k + 2:]
    res = verify(as_lines(tampered), pub)
    assert (res.first_bad.kind, res.first_bad.line) == ("reordered", k + 1)


async def test_moved_record_is_named(trail):
    recs, pub, _ = trail
    k = first_decision_after(recs, 12)
    tampered = recs[:k] + recs[k + 1:k + 6] + [recs[k]] + recs[k + 6:]
    res = verify(as_lines(tampered), pub)
    assert (res.first_bad.kind, res.first_bad.line) == ("reordered", k + 1)


async def test_replayed_record_is_named(trail):
    recs, pub, _ = trail
    k = first_decision_after(recs, 12)
    tampered = recs[:k + 1] + [recs[k]] + recs[k + 1:]
    res = verify(as_lines(tampered), pub)
    assert (res.first_bad.kind, res.first_bad.line) == ("duplicate", k + 2)


async def test_truncated_tail_after_last_checkpoint_needs_an_anchor(trail):
    recs, pub, _ = trail
    cut = recs[:-2] if recs[-3]["type"] != "checkpoint" else recs[:-3]   # the tail gone
    assert cut[-1]["type"] != "checkpoint"
    alone = verify(as_lines(cut), pub)
    assert alone.ok                             # nothing in the file itself can tell ...
    assert any("after the last checkpoint" in w for w in alone.warnings)   # ... and it says so
    anchored = verify(as_lines(cut), pub, anchors=[recs[-1]])   # e.g. from the Redis stream
    assert not anchored.ok
    assert anchored.first_bad.kind == "truncated"
    assert anchored.first_bad.line == len(cut)


async def test_anchor_that_disagrees_names_the_record(trail):
    recs, pub, _ = trail
    cp = idx_of(recs, "checkpoint", 2)
    other = dict(recs[cp], hash="f" * 64)
    res = verify(as_lines(recs), None, anchors=[other])
    assert (res.first_bad.kind, res.first_bad.line) == ("altered", cp + 1)


async def test_forged_checkpoint_signature_is_detected(trail):
    recs, pub, key = trail
    cp = idx_of(recs, "checkpoint", 3)
    attacker = Ed25519PrivateKey.generate()
    forged = rechain(recs, cp, key=attacker)   # re-signed with the attacker's key, chain intact
    assert verify(as_lines(forged), None).ok   # without the public key only the chain is checked
    res = verify(as_lines(forged), pub)
    assert (res.first_bad.kind, res.first_bad.line) == ("forged_signature", cp + 1)


async def test_wrong_public_key_fails_on_first_checkpoint(trail):
    recs, _, _ = trail
    res = verify(as_lines(recs), Ed25519PrivateKey.generate().public_key())
    assert res.first_bad.kind == "forged_signature"
    assert res.first_bad.line == idx_of(recs, "checkpoint") + 1


async def test_missing_rotated_file_is_detected(tmp_path, seed_b64):
    path = tmp_path / "audit.jsonl"
    cfg = file_config(path, seed_b64, rotate_bytes=4096, checkpoint_every=25)
    await write_trail(cfg, 120)
    files = trail_files(path)
    assert len(files) >= 4
    assert verify(read_trail(reversed(files)), cfg.signing_key.public_key()).ok   # any order given
    gone = files[2]
    gone.unlink()
    res = verify(read_trail(trail_files(path)), cfg.signing_key.public_key())
    assert not res.ok and res.first_bad.kind == "deleted"
    assert res.first_bad.source == str(files[3]) and res.first_bad.line == 1
    assert "rotated file is missing" in res.first_bad.message


async def test_rotated_files_chain_without_gaps(tmp_path, seed_b64):
    path = tmp_path / "audit.jsonl"
    cfg = file_config(path, seed_b64, rotate_bytes=4096, checkpoint_every=1000)
    await write_trail(cfg, 100)
    files = trail_files(path)
    assert len(files) >= 3
    per_file = [dicts(split_lines(str(f), f.read_bytes())) for f in files]
    for before, after in zip(per_file, per_file[1:]):
        assert before[-1]["type"] == "checkpoint" and before[-1]["reason"] == "rotate"
        assert after[0]["type"] == "segment.start" and after[0]["reason"] == "rotate"
        assert after[0]["prev"] == before[-1]["hash"] and after[0]["seq"] == before[-1]["seq"] + 1
    # rotated at the first record boundary past the size (plus the closing checkpoint)
    assert all(4096 <= f.stat().st_size < 4096 + 2048 for f in files[:-1])
    assert verify(read_trail(files), cfg.signing_key.public_key()).ok


async def test_restart_continues_the_chain_in_a_new_file(tmp_path, seed_b64):
    path = tmp_path / "audit.jsonl"
    cfg = file_config(path, seed_b64)
    first = await write_trail(cfg, 5)
    second = await write_trail(cfg, 5, start=5)
    files = trail_files(path)
    assert len(files) == 2
    assert second[0]["seq"] > first[-1]["seq"]
    res = verify(read_trail(files), cfg.signing_key.public_key())
    assert res.ok and res.records == sum(1 for _ in read_trail(files))


async def test_torn_last_line_is_truncation_not_corruption(tmp_path, seed_b64):
    path = tmp_path / "audit.jsonl"
    cfg = file_config(path, seed_b64)
    await write_trail(cfg, 20)
    f = trail_files(path)[0]
    data = f.read_bytes()
    f.write_bytes(data[:-40])                       # a crash mid-write of the last record
    res = verify(read_trail([f]), cfg.signing_key.public_key())
    assert res.ok, res.summary()
    assert res.records == data.count(b"\n") - 1
    assert any("incomplete last record" in w for w in res.warnings)
    # the next process resumes from the last complete record, in a new file
    await write_trail(cfg, 3, start=20)
    both = verify(read_trail(trail_files(path)), cfg.signing_key.public_key())
    assert both.ok, both.summary()


async def test_damaged_line_in_the_middle_is_corruption(tmp_path, seed_b64):
    path = tmp_path / "audit.jsonl"
    cfg = file_config(path, seed_b64)
    await write_trail(cfg, 20)
    f = trail_files(path)[0]
    lines = f.read_bytes().split(b"\n")
    lines[7] = lines[7][:30]
    f.write_bytes(b"\n".join(lines))
    res = verify(read_trail([f]), None)
    assert (res.first_bad.kind, res.first_bad.line) == ("corrupt", 8)


async def test_records_as_dicts_and_missing_start(trail):
    recs, pub, _ = trail
    assert verify(recs, pub).ok
    res = verify(recs[5:], pub)
    assert res.first_bad.kind == "missing_start" and res.first_bad.line == 1


def test_signing_keys_load_from_pem_and_seed(tmp_path):
    from cryptography.hazmat.primitives import serialization
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    a, b = load_signing_key(pem), load_signing_key(base64.b64encode(seed))
    assert a.public_key().public_bytes_raw() == b.public_key().public_bytes_raw()
    with pytest.raises(ValueError, match="32"):
        load_signing_key(base64.b64encode(os.urandom(16)))
