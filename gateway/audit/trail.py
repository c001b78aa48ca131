"""The audit trail: one writer task that chains records and writes them to every sink.

``await trail.record(event)`` returns the sealed record once every required sink
has it as durably as its policy promises (``fsync="always"``: on disk before
return; ``"group"``: on disk, fsynced with the other records of the same
``group_ms`` window; ``"none"``: handed to the OS). The gateway awaits it before
forwarding a statement; ``AuditUnavailable`` means "do not forward".

Concurrency: callers only enqueue and wait; the single writer task takes
everything queued as one batch, seals it (seq/prev/hash, checkpoints, segment
starts) and writes the batch to all sinks concurrently, each bounded by
``sink_timeout_ms``. A failed or slow sink fails that batch for records that
require it and marks the trail unhealthy; later batches fail fast without
touching the sink until ``retry_ms`` has passed, then it is tried again and the
trail recovers by itself (the file sink starts a new file whose first record
declares which records it missed).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import orjson

from gateway.audit.chain import Chain, ChainHead, RecordTemplate, encode_line, segment_start_event
from gateway.audit.config import AuditConfig
from gateway.audit.records import CHECKPOINT, COMPLETION_FIELDS, STATEMENT_COMPLETE, plain, sanitize
from gateway.audit.sinks import FileSink, RedisStreamSink, StdoutSink

log = logging.getLogger("piigate.audit")


def _completion_event(session: str, entries: list[tuple]) -> dict:
    # built here from the gateway's own values (seqs, SQLSTATEs, counts): no PII to
    # sanitize; rows under "fields" (records.outcomes reads them)
    return {"type": STATEMENT_COMPLETE, "session": session, "fields": COMPLETION_FIELDS,
            "statements": entries}


class AuditUnavailable(Exception):
    """The record could not be written to a required sink: do not forward the
    statement. The message says which sink failed and why."""
    sqlstate = "58030"   # io_error: what the gateway tells the client it refuses


@dataclass(slots=True)
class _Pending:
    event: Mapping[str, Any] | None          # None: a control item (flush / open)
    required: bool
    future: asyncio.Future


_STOP = object()
MAX_QUEUED = 100_000       # records waiting for the writer before emit() refuses more


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def build_sinks(config: AuditConfig) -> list:
    sinks: list = []
    if config.file is not None:
        sinks.append(FileSink(config.file))
    if config.redis is not None:
        sinks.append(RedisStreamSink(config.redis))
    if config.stdout is not None:
        sinks.append(StdoutSink(config.stdout))
    return sinks


class AuditTrail:
    def __init__(self, config: AuditConfig, *, sinks: list | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.sinks = sinks if sinks is not None else build_sinks(config)
        self.file: FileSink | None = next((s for s in self.sinks if s.kind == "file"), None)
        self.chain: Chain | None = None
        self.last_error: str | None = None
        self._failed: dict[int, str] = {}          # id(sink) -> error, while failed
        self._retry_at: dict[int, float] = {}
        self._queue: asyncio.Queue | None = None
        self._writer: asyncio.Task | None = None
        self._running = False
        self.inline = False
        self._last_sync = 0.0
        self._last_checkpoint = 0.0
        self._optional_tail: dict[int, asyncio.Task] = {}
        self._optional_pending: dict[int, int] = {}
        self._batching = False       # completions/later records are written by a timer
        self._flush_handle: asyncio.TimerHandle | None = None
        self._window = 0.0
        # sanitized events to seal with the next write, and (session, outcome rows)
        # for a statement.complete record (Chain.seal_completion)
        self._later: list[dict | tuple[str, list[tuple]]] = []
        self._completions: dict[str, list[tuple]] = {}   # session -> outcomes not yet written
        f = self.file
        self._inline_sinks = (f is not None and f.writes_inline
                              and all(s is f or not s.required for s in self.sinks))
        self.stats = {"records": 0, "batches": 0, "failed_records": 0, "checkpoints": 0}
        self._hot = False
        #: since_checkpoint at which the next record is the last before a checkpoint
        self._checkpoint_last = config.checkpoint_every - 1

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> "AuditTrail":
        """Resume the chain from the newest file, open a new segment, start writing.
        Raises AuditUnavailable if the first segment cannot be written (a config or
        permission problem the operator must see at start)."""
        head = self.file.resume() if self.file is not None else None
        redis = next((s for s in self.sinks if s.kind == "redis"), None)
        if head is None and self.file is None and redis is not None:
            try:
                head = await asyncio.wait_for(redis.resume(self.config.instance),
                                              self.config.sink_timeout_ms / 1000.0)
            except Exception as e:  # noqa: BLE001 - start anyway; the gap shows in verify
                log.error("audit: cannot read the chain head from the Redis stream: %s", e)
        self.chain = Chain(self.config.instance, head or ChainHead(), self.config.signing_key)
        self._queue = asyncio.Queue()
        self._last_checkpoint = self.clock()
        self._set_running(True)
        self._writer = asyncio.create_task(self._run(), name="audit-writer")
        if self.file is not None and self.file.writes_inline:
            # both: records queued with later()/completed() are written group_ms after
            # the first of them (a timer); group: the file sink's own thread fsyncs
            # group_ms after the first append of each window
            self._batching = True
            self._window = self.file.cfg.group_ms / 1000.0
            self.file.start_syncer(self._fsync_failed)
        try:
            await self.flush(required=True)
        except AuditUnavailable:
            self._set_running(False)
            self._queue.put_nowait(_STOP)
            await self._writer
            if self.file is not None:
                self.file.stop_syncer()
            raise
        return self

    async def close(self) -> None:
        """Write a final checkpoint, then stop the writer and close the sinks."""
        if not self._running:
            return
        self._flush_later()
        self._set_running(False)
        self._queue.put_nowait(_STOP)
        await self._writer
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self.file is not None:
            syncer = self.file.stop_syncer()
            while syncer is not None and syncer.is_alive():
                await asyncio.sleep(self._window / 2 or 0.001)
        # (the file sink's close fsyncs what the syncer has not)
        tails = [t for t in self._optional_tail.values() if not t.done()]
        if tails:
            await asyncio.wait(tails, timeout=self.config.sink_timeout_ms / 1000.0)
        for s in self.sinks:
            try:
                await s.close()
            except Exception as e:  # noqa: BLE001 - closing is best effort
                log.warning("audit: closing %s sink: %s", s.kind, e)

    async def __aenter__(self) -> "AuditTrail":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- the API the gateway uses ----------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._running and not any(s.required for s in self.sinks if id(s) in self._failed)

    @property
    def fail_closed(self) -> bool:
        return self.config.on_failure == "fail_closed"

    async def record(self, event: Mapping[str, Any], *, required: bool | None = None) -> dict:
        """Seal and write one event; return the record once it is durable.

        ``required``: raise AuditUnavailable if a required sink could not take it.
        Default: True under ``on_failure = "fail_closed"``, else False (the record is
        returned but may be missing from a failed sink; ``healthy`` says so). The
        gateway passes ``required=True`` for statements under PII policy.
        """
        return await self.emit(event, required=required)

    def emit(self, event: Mapping[str, Any], *, required: bool | None = None) -> asyncio.Future:
        """Queue an event without waiting; the future resolves like ``record``."""
        if not isinstance(event.get("type"), str):
            raise ValueError("audit event needs a string 'type'")
        if not self._running:
            raise AuditUnavailable("audit trail is not running (not started, or closed)")
        if self._queue.qsize() >= MAX_QUEUED:
            raise AuditUnavailable(f"audit trail is {MAX_QUEUED} records behind (sinks too slow); "
                                   f"refusing more until it catches up")
        pending = _Pending(sanitize(plain(event)), self.fail_closed if required is None else required,
                           asyncio.get_running_loop().create_future())
        # a fire-and-forget caller must not get "exception never retrieved" noise;
        # the failure is in health() and the log already
        pending.future.add_done_callback(_consume)
        self._queue.put_nowait(pending)
        return pending.future

    def _set_running(self, running: bool) -> None:
        self._running = running
        #: True when ``append`` can write synchronously: the trail is running and the
        #: only required sink is a file with fsync group/none (other sinks are written
        #: behind). An attribute, not a property: it is read for every statement.
        self.inline = running and self._inline_sinks
        #: ``append_template`` may write at once: inline, and the file the only sink
        self._hot = self.inline and len(self.sinks) == 1

    def append(self, event: Mapping[str, Any], *, required: bool | None = None) -> None:
        """Seal and write one event *now*, on the caller's thread: when this returns,
        the record is in the file (the OS has it; a kill -9 of the gateway loses
        nothing), fsynced within ``group_ms`` by the background syncer. The gateway
        calls it right before forwarding a statement. Raises AuditUnavailable when the
        file cannot take it (and a required record was asked for). Records queued
        with ``later`` are written first, in the same write.

        Only for an ``inline`` trail; callers that must wait otherwise use ``record``.
        Returns the record's seq (None when it was not written and not required)."""
        return self._write_now(sanitize(event), required)

    def append_template(self, template: RecordTemplate, *, required: bool | None = None) -> int | None:
        """``append`` for a prepared template: the statement hot path. Returns the
        record's seq (None when it could not be written and was not required).

        The common case (nothing else to write first, no checkpoint or rotation
        due, nothing failed, the file the only sink) is sealed and written right
        here with one write(): it runs before every statement under policy is
        forwarded. Everything else goes through ``_write_now``."""
        f = self.file
        if (not self._hot or self._later or self._failed or f.fd is None or template._tail is None):
            return self._write_now(template, required)
        chain = self.chain
        now = self.clock()
        if (chain.since_checkpoint >= self._checkpoint_last or f.size >= f.rotate_size
                or now >= f.rotate_at):
            return self._write_now(template, required)
        line = chain.seal_template(template, now)
        try:
            written = os.write(f.fd, line)
            f.size += written
            if written < len(line):
                f._append(line[written:])
        except OSError as e:
            f._close_quietly()
            self._mark_failed(f, f"{type(e).__name__}: {e}", now)
            if self.fail_closed if required is None else required:
                raise AuditUnavailable(f"audit trail unavailable: file sink: {type(e).__name__}: {e}") from None
            return None
        seq = f._lw_seq = chain._seq
        f._lw_hash = chain._hash
        f.records_written += 1
        f.dirty = True
        if not f._sync_armed:
            f.kick()
        self.stats["records"] += 1
        return seq

    def template(self, event: Mapping[str, Any]) -> RecordTemplate:
        """A prepared record for an event that will be appended many times as is
        (``append_template``): sanitized and serialised once."""
        return RecordTemplate(sanitize(event), self.config.instance)

    def completed(self, session: str, entry: tuple) -> None:
        """One statement's outcome, ``entry`` in the order of ``COMPLETION_FIELDS``.
        Completions are batched per session: every ``group_ms`` the syncer writes one
        ``statement.complete`` record per session listing the outcomes of its
        statements since the last one (each naming the ``decision_seq`` of the
        statement's decision record). A record per outcome would double the trail's
        cost per statement; an outcome needs to follow its statement, not precede
        anything. Kept in memory until then: a kill -9 can lose the last window's
        outcomes, never a decision record."""
        if not self.inline or not self._batching:
            self.emit(_completion_event(session, [entry]))
            return
        pending = self._completions.get(session)
        if pending is None:
            pending = self._completions[session] = []
        pending.append(entry)
        self._completions_added(session, pending)

    def completed_many(self, session: str, inflight: list, now: float, status: str, rows: int,
                       nbytes: int, tx_status: str) -> None:
        """``completed`` for everything a session forwarded since its last
        ReadyForQuery, at that ReadyForQuery: ``inflight`` is ``[(((decision seq,
        fingerprint), ...), started), ...]`` (perf_counter times, as ``now``), and
        they share the outcome (the first SQLSTATE or "ok", rows, bytes). One call per
        ReadyForQuery, not per statement: it runs for every statement under policy."""
        if not self.inline or not self._batching:
            for tracked, t0 in inflight:
                duration = round((now - t0) * 1000, 3)
                for seq, fingerprint in tracked:
                    self.emit(_completion_event(session, [(seq, fingerprint, status, rows, nbytes,
                                                           duration, tx_status)]))
            return
        pending = self._completions.get(session)
        if pending is None:
            pending = self._completions[session] = []
        for tracked, t0 in inflight:
            duration = round((now - t0) * 1000, 3)
            for seq, fingerprint in tracked:
                pending.append((seq, fingerprint, status, rows, nbytes, duration, tx_status))
        self._completions_added(session, pending)

    def _completions_added(self, session: str, pending: list) -> None:
        """A session's outcomes grew: written with its window's flush, or now when a
        session has gathered many (a record stays a reasonable size)."""
        if len(pending) >= 500:
            self._later.append((session, self._completions.pop(session)))
            self._flush_later()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self._window, self._flush_timer)

    def later(self, event: Mapping[str, Any]) -> None:
        """A record that must be written but need not precede anything (a statement's
        completion record): it is sealed and written with the next ``append``, or by
        the background syncer within ``group_ms``, whichever comes first. No future,
        no queue hop: this is per statement."""
        if not self._batching or not self.inline:
            self.emit(event)
            return
        later = self._later
        later.append(sanitize(event))
        if len(later) >= 1000:
            self._flush_later()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self._window, self._flush_timer)

    def _flush_timer(self) -> None:
        self._flush_handle = None
        self._flush_later()

    def _flush_later(self) -> None:
        if self._completions and not self._later and self._write_completions():
            return
        if self._completions:
            completions, self._completions = self._completions, {}
            # (session, rows): sealed by Chain.seal_completion, or as _completion_event
            self._later.extend(completions.items())
        if self._later and self._running and self.inline:
            try:
                self._write_now(None, False)
            except Exception as e:  # noqa: BLE001 - the records are counted as failed
                log.error("audit: completion records not written: %s", e)

    def _write_completions(self) -> bool:
        """The common case of ``_flush_later``: only statement.complete records, the
        file the only sink, nothing failed, no checkpoint or rotation due: sealed
        straight into bytes and written with one write(). False: not the common
        case, nothing done (``_write_now`` does it)."""
        f = self.file
        completions = self._completions
        if self._failed or not self.inline or f.fd is None or len(self.sinks) > 1:
            return False
        chain = self.chain
        now = self.clock()
        if (chain.since_checkpoint + len(completions) >= self.config.checkpoint_every
                or f.should_rotate(now)):
            return False
        self._completions = {}
        seal = chain.seal_completion
        lines = [seal(session, rows, now) for session, rows in completions.items()]
        try:
            f._append(lines[0] if len(lines) == 1 else b"".join(lines))
        except OSError as e:
            f._close_quietly()
            self._mark_failed(f, f"{type(e).__name__}: {e}", now)
            log.error("audit: completion records not written: %s", e)
            return True
        f._lw_seq = chain._seq
        f._lw_hash = chain._hash
        f.records_written += len(lines)
        f.dirty = True
        if not f._sync_armed:
            f.kick()
        self.stats["records"] += len(lines)
        return True

    def _write_now(self, item: "dict | RecordTemplate | None", required: bool | None) -> int | None:
        """Seal what ``later`` queued plus ``item`` and write them with one write()."""
        if not self.inline:
            raise RuntimeError("AuditTrail.append needs an inline file sink; use record()")
        req = self.fail_closed if required is None else required
        f = self.file
        now = self.clock()
        later = self._later
        count = len(later) + (item is not None)
        if id(f) in self._failed and now < self._retry_at[id(f)]:
            self.stats["failed_records"] += count
            later.clear()
            if req and item is not None:
                raise AuditUnavailable(f"audit trail unavailable: file sink: {self._failed[id(f)]}")
            return
        chain = self.chain
        is_template = type(item) is RecordTemplate
        if (f.fd is not None and not self._failed and not f.should_rotate(now)
                and chain.since_checkpoint + count < self.config.checkpoint_every
                and (not is_template or item.usable)
                and (item is None or is_template or item.get("type") not in (CHECKPOINT, "segment.start"))):
            # the common case: no segment to open, no checkpoint due, nothing failed
            lines = [chain.seal_completion(ev[0], ev[1], now) if type(ev) is tuple
                     else chain.seal_line(ev, now)[1] for ev in later]
            later.clear()
            if item is not None:
                lines.append(chain.seal_template(item, now) if is_template else chain.seal_line(item, now)[1])
            try:
                f._append(lines[0] if len(lines) == 1 else b"".join(lines))
            except OSError as e:
                f._close_quietly()
                self._mark_failed(f, f"{type(e).__name__}: {e}", now)
                if req and item is not None:
                    raise AuditUnavailable(f"audit trail unavailable: file sink: {type(e).__name__}: {e}") from None
                return
            f.last_written = chain.head
            f.records_written += len(lines)
            f.dirty = True
            if len(self.sinks) > 1:
                recs = [orjson.loads(line) for line in lines]
                for s in self.sinks:
                    if s is not f:
                        self._write_optional(s, recs, lines, now)
            f.kick()
            self.stats["records"] += len(lines)
            return chain.head.seq if item is not None else None
        # the general case: segment records, checkpoints and rotation as needed
        out = _Batch(self, now)
        for rec in self._segment_records(now):
            out.add_sealed(rec)
        for ev in later:
            out.add(_completion_event(*ev) if type(ev) is tuple else ev)
        later.clear()
        rec = out.add(item.event if is_template else item) if item is not None else None
        errors = self._write_inline(out.records, out.lines, now)
        self.stats["records"] += len(out.records)
        if errors and req and item is not None:
            raise AuditUnavailable("audit trail unavailable: " + "; ".join(errors))
        return None if errors or rec is None else rec["seq"]

    def _write_inline(self, records: list[dict], lines: list[bytes], now: float) -> list[str]:
        errors = []
        f = self.file
        try:
            f.append_now(records, lines)
        except OSError as e:
            self._mark_failed(f, f"{type(e).__name__}: {e}", now)
            errors.append(f"file sink: {type(e).__name__}: {e}")
        else:
            if id(f) in self._failed:
                log.warning("audit: file sink recovered")
                del self._failed[id(f)]
        for s in self.sinks:
            if s is not f:
                self._write_optional(s, records, lines, now)
        f.kick()
        return errors

    def _fsync_failed(self, message: str) -> None:
        """The file sink's syncer thread could not fsync: the sink is failed from now
        on (statements under policy are refused until it recovers in a new file).
        Runs on that thread; ``_mark_failed`` publishes the failure last."""
        self._mark_failed(self.file, message, self.clock())

    async def flush(self, required: bool = True) -> None:
        """Wait until everything queued before this call is written (or failed)."""
        self._flush_later()
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(None, required, fut))
        await fut

    def health(self) -> dict:
        return {
            "healthy": self.healthy,
            "degraded": bool(self._failed),          # an optional sink is failing
            "last_error": self.last_error,
            "instance": self.config.instance,
            "head": None if self.chain is None else {"seq": self.chain.head.seq,
                                                      "hash": self.chain.head.hash},
            "queued": 0 if self._queue is None else self._queue.qsize(),
            "sinks": [{**s.stats(), "required": s.required, "ok": id(s) not in self._failed,
                       "error": self._failed.get(id(s))} for s in self.sinks],
            **self.stats,
        }

    # -- the writer -------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            try:
                first = await asyncio.wait_for(self._queue.get(), self.config.checkpoint_seconds)
            except asyncio.TimeoutError:
                head, since = self.chain.head, self.chain.since_checkpoint
                try:
                    await self._commit([])      # idle: time-based checkpoint / rotation / retry
                except Exception:  # noqa: BLE001
                    log.exception("audit: idle commit failed")
                    self.chain.head, self.chain.since_checkpoint = head, since
                continue
            if first is _STOP:
                break
            window = max((s.batch_window_s for s in self.sinks
                          if not (s is self.file and s.writes_inline)), default=0.0)
            if window:
                # group commit: gather what arrives until one window after the last sync
                wait = self._last_sync + window - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            batch_started = loop.time()      # windows are measured start to start
            batch = [first]
            while not self._queue.empty() and len(batch) < 50_000:
                item = self._queue.get_nowait()
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            head, since = self.chain.head, self.chain.since_checkpoint
            try:
                await self._commit(batch)
            except Exception as e:  # noqa: BLE001 - the writer must never die silently
                log.exception("audit: writer failed")
                # nothing of this batch was acknowledged: the chain goes on from before it
                self.chain.head, self.chain.since_checkpoint = head, since
                self._fail_all(batch, f"audit writer error: {e}")
            self._last_sync = batch_started
        try:
            await self._commit([], final=True)
        except Exception:  # noqa: BLE001
            log.exception("audit: final checkpoint failed")
        while not self._queue.empty():      # anything left after STOP
            item = self._queue.get_nowait()
            if item is not _STOP:
                self._fail_all([item], "audit trail closed")

    def _fail_all(self, batch: list, message: str) -> None:
        for p in batch:
            if p is not _STOP and not p.future.done():
                p.future.set_exception(AuditUnavailable(message))

    def _seal(self, event: Mapping[str, Any], now: float) -> dict:
        rec = self.chain.seal(event, now)
        if rec["type"] == CHECKPOINT:
            self._last_checkpoint = now
            self.stats["checkpoints"] += 1
        return rec

    def _segment_records(self, now: float) -> list[dict]:
        """segment.start (and a closing checkpoint) the file sink needs in this batch."""
        f = self.file
        if f is None:
            return []
        if id(f) in self._failed:
            if f.busy or now < self._retry_at[id(f)]:
                return []
            seg, name = f.next_segment()
            gap = None
            if f.last_written is not None:
                gap = {"after_seq": f.last_written.seq, "after_hash": f.last_written.hash,
                       "count": self.chain.head.seq - f.last_written.seq,
                       "error": self._failed[id(f)]}
            return [self._seal(segment_start_event(segment=seg, file=name, reason="recover",
                                                   gap=gap), now)]
        if not f.is_open:
            seg, name = f.next_segment()
            return [self._seal(segment_start_event(segment=seg, file=name, reason="start"), now)]
        if f.should_rotate(now):
            cp = self._seal(self.chain.checkpoint_event("rotate"), now)
            seg, name = f.next_segment()
            return [cp, self._seal(segment_start_event(segment=seg, file=name, reason="rotate"), now)]
        return []

    async def _commit(self, batch: list, final: bool = False) -> None:
        now = self.clock()
        out = _Batch(self, now)
        for rec in self._segment_records(now):
            out.add_sealed(rec)
        owned: list[tuple[_Pending, dict | None]] = []
        for p in batch:
            owned.append((p, None if p.event is None else out.add(p.event)))
        since = self.chain.since_checkpoint
        if since and (final or now - self._last_checkpoint >= self.config.checkpoint_seconds):
            out.add(self.chain.checkpoint_event("shutdown" if final else "periodic"))
        if not out.records:
            for p, _ in owned:
                if not p.future.done():
                    p.future.set_result(None)
            return
        errors = await self._write_all(out.records, out.lines, now)
        self.stats["batches"] += 1
        self.stats["records"] += len(out.records)
        required_failed = [e for s, e in errors if s.required]
        for p, rec in owned:
            if p.future.done():
                continue                      # the caller was cancelled
            if required_failed and p.required:
                self.stats["failed_records"] += rec is not None
                p.future.set_exception(AuditUnavailable(
                    "audit trail unavailable: " + "; ".join(required_failed)
                    + f" (statements that need an audit record are refused until it "
                      f"recovers; retrying every {self.config.retry_ms / 1000:g}s)"))
            else:
                p.future.set_result(rec)

    async def _write_all(self, records: list[dict], lines: list[bytes],
                         now: float) -> list[tuple[Any, str]]:
        timeout = self.config.sink_timeout_ms / 1000.0
        attempts, errors = [], []
        for s in self.sinks:
            if not s.required:
                self._write_optional(s, records, lines, now)
                continue
            if id(s) in self._failed:
                retrying = (s is self.file and any(r["type"] == "segment.start" for r in records)) or \
                           (s is not self.file and now >= self._retry_at[id(s)] and not s.busy)
                if not retrying:
                    errors.append((s, f"{s.kind} sink: {self._failed[id(s)]}"))
                    continue
            elif s.busy:
                self._mark_failed(s, "still busy with an earlier write (slow sink)", now)
                errors.append((s, f"{s.kind} sink: still busy with an earlier write (slow sink)"))
                continue
            if s is self.file and s.writes_inline:
                # sealed and appended without an await in between: file order = chain order
                try:
                    s.append_now(records, lines)
                except OSError as e:
                    self._mark_failed(s, f"{type(e).__name__}: {e}", now)
                    errors.append((s, f"{s.kind} sink: {type(e).__name__}: {e}"))
                else:
                    if id(s) in self._failed:
                        log.warning("audit: %s sink recovered", s.kind)
                        del self._failed[id(s)]
                    s.kick()
                continue
            attempts.append(s)
        results = await asyncio.gather(
            *(asyncio.wait_for(s.write(records, lines), timeout) for s in attempts),
            return_exceptions=True)
        for s, res in zip(attempts, results):
            if isinstance(res, BaseException):
                msg = (f"no answer within {self.config.sink_timeout_ms:g} ms"
                       if isinstance(res, asyncio.TimeoutError) else f"{type(res).__name__}: {res}")
                self._mark_failed(s, msg, now)
                errors.append((s, f"{s.kind} sink: {msg}"))
            elif id(s) in self._failed:
                log.warning("audit: %s sink recovered", s.kind)
                del self._failed[id(s)]
        return errors

    def _write_optional(self, s: Any, records: list[dict], lines: list[bytes], now: float) -> None:
        """An optional sink is written behind the acknowledgements, in order, on its
        own task: a slow one never delays a record, it falls behind, then drops."""
        if id(s) in self._failed and now < self._retry_at[id(s)]:
            self.stats["optional_dropped"] = self.stats.get("optional_dropped", 0) + len(records)
            return
        if self._optional_pending.get(id(s), 0) >= 64:
            self._mark_failed(s, "falling behind (64 batches queued); records dropped", now)
            return
        prev = self._optional_tail.get(id(s))
        timeout = self.config.sink_timeout_ms / 1000.0

        async def run() -> None:
            try:
                if prev is not None:
                    await asyncio.wait([prev])
                await asyncio.wait_for(s.write(records, lines), timeout)
            except Exception as e:  # noqa: BLE001 - recorded in health, never raised
                msg = (f"no answer within {self.config.sink_timeout_ms:g} ms"
                       if isinstance(e, asyncio.TimeoutError) else f"{type(e).__name__}: {e}")
                self._mark_failed(s, msg, self.clock())
            else:
                if id(s) in self._failed:
                    log.warning("audit: %s sink recovered", s.kind)
                    del self._failed[id(s)]
            finally:
                self._optional_pending[id(s)] -= 1

        self._optional_pending[id(s)] = self._optional_pending.get(id(s), 0) + 1
        self._optional_tail[id(s)] = asyncio.create_task(run())

    def _mark_failed(self, sink: Any, msg: str, now: float) -> None:
        # (also called on the file sink's syncer thread: _retry_at is set before
        # _failed, which is what the loop's thread tests first)
        first = id(sink) not in self._failed
        # from when the failure was seen, not when the batch began (a timeout is long)
        self._retry_at[id(sink)] = max(now, self.clock()) + self.config.retry_ms / 1000.0
        self.last_error = f"{sink.kind} sink: {msg}"
        self._failed[id(sink)] = msg
        if first:
            log.error("audit: %s sink failed: %s", sink.kind, msg)


class _Batch:
    """The records of one write, sealed in order, with a signed checkpoint every
    ``checkpoint_every`` records and a rotation wherever the file would pass
    ``rotate_bytes`` (so a big batch neither skips a checkpoint nor overfills a
    file)."""

    def __init__(self, trail: AuditTrail, now: float):
        self.trail, self.now = trail, now
        self.records: list[dict] = []
        self.lines: list[bytes] = []
        f = trail.file
        self.file_size = f.size if f is not None and f.is_open and id(f) not in trail._failed else None

    def add_sealed(self, rec: dict) -> dict:
        line = encode_line(rec)
        self.records.append(rec)
        self.lines.append(line)
        if rec["type"] == "segment.start":
            self.file_size = 0
        if self.file_size is not None:
            self.file_size += len(line)
        return rec

    def add(self, event: Mapping[str, Any]) -> dict:
        t = self.trail
        f = t.file
        if (self.file_size is not None and self.file_size >= f.cfg.rotate_bytes
                and event.get("type") != CHECKPOINT):
            self.add_sealed(t._seal(t.chain.checkpoint_event("rotate"), self.now))
            seg, name = f.next_segment_after(self._last_segment())
            self.add_sealed(t._seal(segment_start_event(segment=seg, file=name, reason="rotate"),
                                    self.now))
        rec = self.add_sealed(t._seal(event, self.now))
        if rec["type"] != CHECKPOINT and t.chain.since_checkpoint >= t.config.checkpoint_every:
            self.add_sealed(t._seal(t.chain.checkpoint_event("periodic"), self.now))
        return rec

    def _last_segment(self) -> int:
        for r in reversed(self.records):
            if r["type"] == "segment.start":
                return r["segment"]
        return self.trail.file.segment
