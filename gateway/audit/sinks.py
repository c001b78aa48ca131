"""Where audit records go: JSON-lines files, a Redis Stream, stdout. (I/O.)

A sink takes a batch of already chained records and their encoded lines and
returns when they are as durable as its policy promises, or raises. The trail's
single writer task calls it; file and stdout writes run on the sink's own thread
so a slow disk or a blocked pipe never blocks the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import orjson

from gateway.audit.chain import ChainHead
from gateway.audit.config import FileSinkConfig, RedisSinkConfig, StdoutSinkConfig
from gateway.audit.fsyncer import ProcessSyncer, SyncerUnavailable
from gateway.audit.records import SEGMENT_START

log = logging.getLogger("piigate.audit")

#: fsync="group": fsync in a child process (fsyncer.py) rather than a thread of the
#: gateway's own, which contends with the event loop for the GIL. False: the thread
#: (also the fallback where the child cannot be started).
PROCESS_SYNCER = True


class FileSink:
    """Append-only JSON-lines files, one per segment: ``audit.000001.jsonl``, ...

    A new segment starts at every gateway start, at rotation (size or age) and
    when the sink recovers from a failure; it begins with the ``segment.start``
    record that the trail puts in the batch, so there is never a gap between
    files. Files are never renamed or reopened for append (a crash can leave a
    torn last line; the next process starts a new file instead of writing after
    it).

    fsync: ``always`` fsyncs after every record; ``group`` writes the batch then
    fsyncs once (the trail gathers records for ``group_ms``); ``none`` leaves it to
    the OS (a crash of the process loses nothing, a crash of the machine may).
    """
    kind = "file"

    def __init__(self, cfg: FileSinkConfig):
        self.cfg = cfg
        self.required = cfg.required
        self.path = Path(cfg.path)
        self.fd: int | None = None
        self.current: Path | None = None
        self.segment = 0
        self.size = 0
        self.opened_at = 0.0
        #: size and time (self.opened_at + rotate_seconds) at which the segment is
        #: rotated: the trail's hot path compares, should_rotate says so
        self.rotate_size = cfg.rotate_bytes
        self.rotate_at = float("inf")
        # the last record fully written to a file (see last_written); the trail's
        # statement hot path sets the two fields, not a ChainHead per record
        self._lw_seq: int | None = None
        self._lw_hash = ""
        self.fsyncs = 0
        self.records_written = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-file")
        self._busy: asyncio.Future | None = None
        self.dirty = False                     # appended but not yet fsynced (group policy)
        self._fd_lock = threading.Lock()       # fsync on a syncer thread vs. close/rotate
        # group policy: a child process (or, where it cannot run, a long-lived thread)
        # fsyncs group_ms after the first append of each window (start_syncer); the
        # loop only ever sets a flag and, once per window, sends the child a datagram
        # (or sets the thread's Event): no future, no executor hand-off
        self._syncer: "ProcessSyncer | threading.Thread | None" = None
        self._process_syncer = False           # _syncer is a ProcessSyncer
        self._sync_wake = threading.Event()
        self._sync_armed = False               # the syncer will fsync what is appended now
        self._sync_stop = False

    @property
    def last_written(self) -> ChainHead | None:
        """The seq and hash of the last record fully written to a file (None: none yet)."""
        return None if self._lw_seq is None else ChainHead(self._lw_seq, self._lw_hash)

    @last_written.setter
    def last_written(self, head: ChainHead | None) -> None:
        if head is None:
            self._lw_seq, self._lw_hash = None, ""
        else:
            self._lw_seq, self._lw_hash = head.seq, head.hash

    # -- naming -----------------------------------------------------------------------

    def _pattern(self) -> re.Pattern:
        stem, suffix = self._stem_suffix()
        return re.compile(re.escape(stem.name) + r"\.(\d{6,})" + re.escape(suffix) + r"$")

    def _stem_suffix(self) -> tuple[Path, str]:
        if self.path.suffix:
            return self.path.with_suffix(""), self.path.suffix
        return self.path, ""

    def file_for(self, segment: int) -> Path:
        stem, suffix = self._stem_suffix()
        return stem.with_name(f"{stem.name}.{segment:06d}{suffix}")

    def existing_files(self) -> list[Path]:
        """This sink's files in segment order."""
        d = self.path.parent
        pat = self._pattern()
        found = []
        if d.is_dir():
            for p in d.iterdir():
                m = pat.match(p.name)
                if m:
                    found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    # -- resume -----------------------------------------------------------------------

    def resume(self) -> ChainHead | None:
        """Scan existing files: the next segment number and the chain head to continue
        from (the last complete record of the newest file that has one)."""
        files = self.existing_files()
        if files:
            self.segment = int(self._pattern().match(files[-1].name).group(1))
        for p in reversed(files):
            head = _last_complete_record(p)
            if head is not None:
                self.last_written = head
                return head
        return None

    def next_segment(self) -> tuple[int, str]:
        return self.next_segment_after(self.segment)

    def next_segment_after(self, segment: int) -> tuple[int, str]:
        return segment + 1, self.file_for(segment + 1).name

    def should_rotate(self, now: float) -> bool:
        return self.fd is not None and (self.size >= self.cfg.rotate_bytes
                                        or now - self.opened_at >= self.cfg.rotate_seconds)

    @property
    def is_open(self) -> bool:
        return self.fd is not None

    @property
    def busy(self) -> bool:
        """A write is still running on the sink's thread (e.g. after a timeout)."""
        return self._busy is not None and not self._busy.done()

    @property
    def batch_window_s(self) -> float:
        return self.cfg.group_ms / 1000.0 if self.cfg.fsync == "group" else 0.0

    # -- writing ----------------------------------------------------------------------

    async def write(self, records: Sequence[dict], lines: Sequence[bytes]) -> None:
        if self.cfg.fsync == "none" and not self.busy:
            # no fsync to wait for: a page-cache write is microseconds, and a hop to
            # the sink's thread would cost more than the write (a GIL hand-off)
            self._write_sync(records, lines)
            return
        loop = asyncio.get_running_loop()
        self._busy = loop.run_in_executor(self._executor, self._write_sync, records, lines)
        await asyncio.shield(self._busy)

    def _write_sync(self, records: Sequence[dict], lines: Sequence[bytes]) -> None:
        always = self.cfg.fsync == "always"
        dirty = False
        try:
            for rec, line in zip(records, lines):
                if rec.get("type") == SEGMENT_START:
                    if dirty and self.cfg.fsync != "none":
                        self._fsync()
                    dirty = False
                    self._open_segment(rec["segment"], rec["file"], rec["ts"])
                if self.fd is None:
                    raise OSError("no open audit file (the sink failed and has not recovered)")
                self._append(line)
                self.last_written = ChainHead(rec["seq"], rec["hash"])
                self.records_written += 1
                if always:
                    self._fsync()
                else:
                    dirty = True
            if dirty and self.cfg.fsync == "group":
                self._fsync()
        except OSError:
            self._close_quietly()
            raise

    @property
    def writes_inline(self) -> bool:
        """group/none: records are appended on the event loop's thread the moment they
        are sealed (a write() to the page cache: a process crash loses nothing), and
        fsynced in the background; always: written and fsynced on the sink's thread."""
        return self.cfg.fsync != "always"

    def append_now(self, records: Sequence[dict], lines: Sequence[bytes]) -> None:
        """Write sealed records on the caller's thread, in order, without fsync."""
        try:
            for rec, line in zip(records, lines):
                if rec.get("type") == SEGMENT_START:
                    self._open_segment(rec["segment"], rec["file"], rec["ts"])
                if self.fd is None:
                    raise OSError("no open audit file (the sink failed and has not recovered)")
                self._append(line)
                self.last_written = ChainHead(rec["seq"], rec["hash"])
                self.records_written += 1
            self.dirty = True
        except OSError:
            self._close_quietly()
            raise

    def sync_if_dirty(self) -> None:
        """fsync what append_now wrote (runs on a thread other than the loop's). The
        lock makes sure the fd is the open file's: rotation and failure close it
        under the same lock, so a closed (or reused) fd number is never fsynced."""
        with self._fd_lock:
            if self.dirty and self.fd is not None:
                self.dirty = False
                self._fsync()

    async def group_sync(self) -> None:
        if self.dirty and self.cfg.fsync == "group":
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self.sync_if_dirty)

    # -- group commit: the syncer thread -------------------------------------------------

    def start_syncer(self, on_error) -> None:
        """fsync="group": start what fsyncs appended records ``group_ms`` after the
        first append of each window (``kick``): the fsync child process, else a
        thread. ``on_error(message)`` is called when an fsync fails (the trail marks
        the sink failed); from the loop for the child, from the thread for a thread."""
        if self.cfg.fsync != "group" or self._syncer is not None:
            return
        if PROCESS_SYNCER:
            syncer = ProcessSyncer(self._synced, lambda mark, message: self._sync_failed(message, on_error))
            try:
                syncer.start(self.fd)
            except SyncerUnavailable as e:
                log.warning("audit: %s; fsyncing on a thread instead", e)
            else:
                self._syncer, self._process_syncer = syncer, True
                return
        self._sync_stop = False
        self._process_syncer = False
        self._syncer = threading.Thread(target=self._sync_loop, args=(on_error,),
                                        name="audit-fsync", daemon=True)
        self._syncer.start()

    def kick(self) -> None:
        """After an append (on the loop's thread): make sure the syncer fsyncs it
        within ``group_ms``. Costs an attribute test unless the syncer is idle."""
        if not self._sync_armed and self._syncer is not None:
            self._sync_armed = True
            if self._process_syncer:
                self._syncer.kick(self.records_written, self.cfg.group_ms / 1000.0)
            else:
                self._sync_wake.set()

    def _synced(self, mark: int) -> None:
        """The child fsynced everything written up to its kick (``mark`` records):
        idle again, or, when more was written since, another window."""
        self.fsyncs += 1
        if self.records_written > mark and self._syncer is not None:
            self._syncer.kick(self.records_written, self.cfg.group_ms / 1000.0)
        else:
            self._sync_armed = False
            self.dirty = False

    def _sync_failed(self, message: str, on_error) -> None:
        self._sync_armed = False
        try:
            on_error(message)
        except Exception:  # noqa: BLE001 - the failure is logged by the trail
            pass

    def _sync_loop(self, on_error) -> None:
        window = self.cfg.group_ms / 1000.0
        wake = self._sync_wake
        while True:
            wake.wait()
            wake.clear()
            if self._sync_stop:
                return
            while True:
                time.sleep(window)
                try:
                    self.sync_if_dirty()
                except Exception as e:  # noqa: BLE001 - the thread must not die
                    try:
                        on_error(f"fsync: {type(e).__name__}: {e}")
                    except Exception:  # noqa: BLE001
                        pass
                # disarm, then look again: an append that saw the syncer armed set
                # dirty before testing it, so it is seen here (or it re-arms it)
                self._sync_armed = False
                if self._sync_stop or not self.dirty:
                    break
                self._sync_armed = True

    def stop_syncer(self) -> "ProcessSyncer | threading.Thread | None":
        """Ask the syncer to end (a thread after its current window); returns it, to
        wait for while its ``is_alive()``."""
        t, self._syncer = self._syncer, None
        if t is not None and self._process_syncer:
            self._sync_armed = False
            return t.stop()
        if t is not None:
            self._sync_stop = True
            self._sync_wake.set()
        return t

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            self.size += n
            view = view[n:]

    def _fsync(self) -> None:
        os.fsync(self.fd)
        self.fsyncs += 1

    def _open_segment(self, segment: int, name: str, ts: str) -> None:
        if self.fd is not None:
            with self._fd_lock:
                if self.cfg.fsync != "none":
                    self._fsync()
                os.close(self.fd)
                self.fd = None
                self.dirty = False
        path = self.path.parent / name
        # O_EXCL: never append to a file another process (or a previous run) wrote
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        self.fd, self.current, self.segment, self.size = fd, path, segment, 0
        self.opened_at = time.time()
        self.rotate_at = self.opened_at + self.cfg.rotate_seconds
        if self._process_syncer and self._syncer is not None:
            self._syncer.set_fd(fd)
        if self.cfg.fsync != "none":
            _fsync_dir(path.parent)       # the new name survives a power cut too

    def _close_quietly(self) -> None:
        if self._process_syncer and self._syncer is not None:
            self._syncer.drop_fd()
        if self.fd is not None:
            with self._fd_lock:
                try:
                    os.close(self.fd)
                except OSError:
                    pass
                self.fd = None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()

        def _close():
            if self.fd is not None and self.cfg.fsync != "none":
                try:
                    self._fsync()
                except OSError:
                    pass
            self._close_quietly()
        await loop.run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=False)

    def stats(self) -> dict:
        return {"kind": self.kind, "file": str(self.current) if self.current else None,
                "segment": self.segment, "bytes": self.size, "fsyncs": self.fsyncs,
                "records": self.records_written, "fsync": self.cfg.fsync}


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _last_complete_record(path: Path) -> ChainHead | None:
    """The seq and hash of the last newline-terminated, parseable record of a file."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block = 1 << 16
        pos = end
        tail = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
            lines = tail.split(b"\n")
            # lines[-1] is after the last newline: torn or empty; lines[0] may be partial
            complete = lines[1:-1] if pos > 0 else lines[:-1]
            for raw in reversed(complete):
                try:
                    rec = orjson.loads(raw)
                    return ChainHead(int(rec["seq"]), str(rec["hash"]))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
    return None


class RedisStreamSink:
    """XADD to one stream with ``MAXLEN ~ maxlen``: central collection from many
    instances, and the place checkpoints are anchored outside the host."""
    kind = "redis"
    batch_window_s = 0.0
    busy = False

    def __init__(self, cfg: RedisSinkConfig, client: Any = None):
        import redis.asyncio as aioredis
        self.cfg = cfg
        self.required = cfg.required
        self.client = client or aioredis.from_url(cfg.url, socket_connect_timeout=2,
                                                  socket_timeout=5)
        self.records_written = 0

    async def write(self, records: Sequence[dict], lines: Sequence[bytes]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for rec, line in zip(records, lines):
            pipe.xadd(self.cfg.stream,
                      {"r": line.rstrip(b"\n"), "instance": rec["instance"], "type": rec["type"]},
                      maxlen=self.cfg.maxlen, approximate=True)
        await pipe.execute()
        self.records_written += len(lines)

    async def resume(self, instance: str, scan: int = 10_000) -> ChainHead | None:
        """The newest record of ``instance`` among the stream's last ``scan`` entries:
        where a trail without a file sink continues its chain after a restart."""
        for _id, fields in await self.client.xrevrange(self.cfg.stream, count=scan):
            if fields.get(b"instance") == instance.encode():
                rec = orjson.loads(fields[b"r"])
                return ChainHead(int(rec["seq"]), str(rec["hash"]))
        return None

    async def close(self) -> None:
        await self.client.aclose()

    def stats(self) -> dict:
        return {"kind": self.kind, "stream": self.cfg.stream, "records": self.records_written}


async def read_stream(client: Any, stream: str, count: int | None = None,
                      reverse: bool = False) -> list[dict]:
    """Records from a Redis stream sink (oldest first unless ``reverse``)."""
    if reverse:
        entries = await client.xrevrange(stream, count=count)
    else:
        entries = await client.xrange(stream, count=count)
    return [orjson.loads(fields[b"r"]) for _id, fields in entries]


class StdoutSink:
    """JSON lines on stdout, for containers whose log collector ships them."""
    kind = "stdout"
    batch_window_s = 0.0

    def __init__(self, cfg: StdoutSinkConfig, stream: Any = None):
        self.cfg = cfg
        self.required = cfg.required
        self.stream = stream or sys.stdout.buffer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-stdout")
        self._busy: asyncio.Future | None = None
        self.records_written = 0

    @property
    def busy(self) -> bool:
        return self._busy is not None and not self._busy.done()

    async def write(self, records: Sequence[dict], lines: Sequence[bytes]) -> None:
        def _write():
            self.stream.write(b"".join(lines))
            self.stream.flush()
        self._busy = asyncio.get_running_loop().run_in_executor(self._executor, _write)
        await asyncio.shield(self._busy)
        self.records_written += len(lines)

    async def close(self) -> None:
        self._executor.shutdown(wait=False)

    def stats(self) -> dict:
        return {"kind": self.kind, "records": self.records_written}
