"""Group commit's fsync in a small process of its own. (I/O.)

With ``fsync = "group"`` the gateway appends each record on the event loop's thread
(a write() to the page cache) and something else must fsync the file within
``group_ms``. A thread of the gateway's own did that at first, but a thread shares
the GIL with the event loop: it needs the GIL after every sleep and every fsync, and
while it waits for it each write() of the loop hands the GIL over and back. Under
load that cost the relay a quarter of its throughput (benchmarks: full audit at
6.4k TPS against 9.8k with the fsync done by another process, which is as fast as
no audit file at all).

So the fsync runs in a child process that shares no GIL with the loop: it holds its
own descriptor of the open segment (passed over a socket), and the loop talks to it
with one datagram per window:

- ``O`` + descriptor: the segment to fsync from now on (sent at every new segment);
- ``C``: drop the descriptor (the sink failed or closed);
- ``K`` + mark + window: fsync ``window`` seconds from now; ``mark`` says how many
  records the loop had written when it asked, and comes back with the answer;
- ``S`` + mark (child -> loop): fsynced; ``E`` + mark + message: the fsync failed;
- ``F`` + errno: tests only: fail the following fsyncs with that errno (0: stop).

The child ends when the loop's end of the socket closes, also when the gateway is
killed, so it never outlives the gateway. It ignores SIGINT: Ctrl-C in a terminal
reaches the whole process group, and the gateway decides when its syncer ends.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import subprocess
import sys
from typing import Callable

log = logging.getLogger("piigate.audit")

_MARK = struct.Struct("<Q")
_KICK = struct.Struct("<Qd")

#: The child: standard library only, run with -I -S so it starts in milliseconds and
#: imports nothing from the gateway's environment.
CHILD = r"""
import os, select, signal, socket, struct, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
sock = socket.socket(fileno=int(sys.argv[1]))
MARK, KICK = struct.Struct("<Q"), struct.Struct("<Qd")
fd = None
due = None
mark = 0
fail = 0
while True:
    timeout = None if due is None else max(0.0, due - time.monotonic())
    if select.select([sock], [], [], timeout)[0]:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 512, 4)
        except OSError:
            break
        if not msg:
            break
        op = msg[:1]
        if op == b"K":
            m, window = KICK.unpack_from(msg, 1)
            mark = max(mark, m)
            if due is None:
                due = time.monotonic() + window
        elif op == b"O":
            if fd is not None:
                os.close(fd)
            fd = fds[0] if fds else None
            for extra in fds[1:]:
                os.close(extra)
        elif op == b"C":
            if fd is not None:
                os.close(fd)
            fd = None
        elif op == b"F":
            fail = int(msg[1:] or b"0")
        continue
    due = None
    try:
        if fail:
            raise OSError(fail, os.strerror(fail))
        if fd is not None:
            os.fsync(fd)
        reply = b"S" + MARK.pack(mark)
    except OSError as e:
        reply = b"E" + MARK.pack(mark) + f"{type(e).__name__}: {e}".encode("utf-8", "replace")
    try:
        sock.send(reply)
    except OSError:
        break
"""


class SyncerUnavailable(Exception):
    """The child could not be started (no SOCK_SEQPACKET, no fork/exec): the file
    sink falls back to a thread."""


class ProcessSyncer:
    """The loop's side of the fsync child. Every method runs on the event loop's
    thread except ``set_fd``/``drop_fd``, which a sink may call from its own thread
    (a datagram send is atomic)."""

    def __init__(self, on_synced: Callable[[int], None], on_error: Callable[[int, str], None]):
        self._on_synced = on_synced
        self._on_error = on_error
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self.dead = False            # the child ended without being asked to

    def start(self, fd: int | None) -> None:
        """Start the child and hand it ``fd``. Raises SyncerUnavailable."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except (OSError, AttributeError) as e:
            raise SyncerUnavailable(f"no SOCK_SEQPACKET socket pair: {e}") from None
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", CHILD, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as e:
            ours.close()
            raise SyncerUnavailable(f"cannot start the fsync process: {e}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self.dead = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(ours.fileno(), self._readable)
        if fd is not None:
            self.set_fd(fd)

    @property
    def running(self) -> bool:
        return self._sock is not None and not self.dead

    def set_fd(self, fd: int) -> None:
        """The segment to fsync from now on (the child keeps its own descriptor of
        it, so the sink may close ``fd`` whenever it likes)."""
        self._fd = fd
        if self.dead:
            self._restart()
            return
        if self._sock is None:
            return
        try:
            socket.send_fds(self._sock, [b"O"], [fd])
        except OSError as e:
            self._died(f"cannot reach the fsync process: {e}")

    def drop_fd(self) -> None:
        self._fd = None
        if self._sock is not None and not self.dead:
            try:
                self._sock.send(b"C")
            except OSError:
                pass

    def kick(self, mark: int, window: float) -> None:
        """fsync ``window`` seconds from now; ``on_synced(mark)`` (or ``on_error``)
        follows on the loop."""
        if self.dead:
            self._on_error(mark, "fsync: the fsync process has ended")
            return
        try:
            self._sock.send(b"K" + _KICK.pack(mark, window))
        except OSError as e:
            self._died(f"cannot reach the fsync process: {e}")
            self._on_error(mark, f"fsync: {e}")

    def inject_failure(self, errno_: int) -> None:
        """Tests: fail every following fsync with ``errno_`` (0: stop failing)."""
        self._sock.send(b"F" + str(errno_).encode())

    def _readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                msg = sock.recv(4096)
            except BlockingIOError:
                return
            except OSError as e:
                self._died(f"the fsync process is unreachable: {e}")
                return
            if not msg:
                self._died("the fsync process ended")
                return
            mark = _MARK.unpack_from(msg, 1)[0] if len(msg) >= 9 else 0
            if msg[:1] == b"S":
                self._on_synced(mark)
            else:
                self._on_error(mark, "fsync: " + msg[9:].decode("utf-8", "replace"))
            sock = self._sock

    def _died(self, why: str) -> None:
        if self.dead or self._sock is None:
            return
        self.dead = True
        log.error("audit: %s; records are no longer fsynced until the sink recovers", why)
        self._close_socket()
        self._on_error(0, f"fsync: {why}")

    def _restart(self) -> None:
        """After the child died: a new one for the new segment (the sink recovers in
        a new segment after a failure, and that is when this runs)."""
        self._reap()
        try:
            self.start(self._fd)
        except SyncerUnavailable as e:
            log.error("audit: %s", e)
            self.dead = True

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                self._loop.remove_reader(sock.fileno())
            except Exception:  # noqa: BLE001 - the loop may be closing
                pass
            sock.close()

    def _reap(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self) -> "ProcessSyncer":
        """Close the socket: the child ends at once (a pending fsync is the sink's
        close to do). Returns self, whose ``is_alive`` says when it has gone."""
        self._close_socket()
        return self

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
