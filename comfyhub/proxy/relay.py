"""Large downloads relayed off the event loop: instance socket → browser socket, in a thread.

Why: ComfyUI sends files with sendfile, so direct downloads never enter Python. Through the
asyncio path every byte is read into a Python object, handed through uvicorn and written
again, all on the one event-loop thread: measured 0.24–0.35× the direct throughput for a
50 MiB `/view`, and even a bare asyncio relay with no HTTP at all stays near 0.5×. A thread
that moves the bytes between the two sockets with blocking-style I/O and big buffers (or
with `os.splice`, which keeps them in the kernel) reaches most of the direct speed, and the
event loop stays free for everybody else meanwhile (the GIL is released in each syscall).

When: the proxy asks for it only for a response with a Content-Length of at least
RELAY_MIN whose request had no body, and only behind uvicorn's httptools protocol
(`comfyhub serve`'s default) on a plain TCP connection: that is the one server whose
state we know well enough to write on its socket safely. Anything else (h11, TLS, a Unix
socket, a test client, a wrapped `send`, too many relays at once) keeps the normal path.

How, without losing or duplicating a byte:

1. uvicorn writes the response head as usual; we wait until its transport holds no unsent
   bytes (uvloop writes at once; otherwise a few loop turns, else the normal path).
2. With no await in between, both transports stop reading (uvicorn's own flow control for
   the browser side, so it resumes it itself when the response completes), the body bytes
   the instance connection already read are taken over, and both sockets are `dup`ed: the
   thread owns its descriptors, so closing a transport meanwhile never lets it write to a
   reused descriptor number.
3. The thread writes the taken-over bytes, then moves exactly the rest of the body (never a
   byte more, so the instance connection stays at a message boundary and can be reused).
   The sockets stay non-blocking; the thread waits with poll() in short slices, so a stop
   request (cancelled task, shutdown) ends it within RELAY_SLICE seconds, and a side that
   makes no progress for RELAY_STALL_TIMEOUT seconds ends it too.
4. Back on the loop: on success uvicorn's count of the body still to send is lowered by what
   the thread wrote and the response is completed with an empty last `send`, so uvicorn
   re-arms keep-alive and reads the next request; the instance connection goes back to the
   pool. On any failure both connections are closed (the browser sees a short body, as with
   any broken download) and the instance connection is never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import select
import socket
import threading
import time

log = logging.getLogger("comfyhub.proxy")

RELAY_MIN = 1 << 20  # smaller bodies cost less on the loop than a thread hand-off
RELAY_BUF = 1 << 20  # bytes per read (copy mode) or pipe capacity (splice mode)
RELAY_SLICE = 0.5  # seconds between looks at the stop flag while a side is not ready
RELAY_STALL_TIMEOUT = 300.0  # a side that takes or gives nothing this long ends the relay
MAX_RELAYS = 64  # more large downloads at once than this take the normal path
USE_SPLICE = hasattr(os, "splice")

try:  # The one server implementation whose connection state is known here.
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as _UvicornCycle
except Exception:  # noqa: BLE001 — uvicorn absent or reorganised: never relay
    _UvicornCycle = None

_FLUSH_TURNS = 20  # loop turns to wait for uvicorn to write the response head


class _Stopped(Exception):
    pass


class Progress:
    """What the thread has done so far (read by the loop once the thread has finished)."""

    __slots__ = ("error", "sent")

    def __init__(self):
        self.sent = 0  # body bytes written to the browser
        self.error: BaseException | None = None


class Relays:
    """Large-body relay threads of one proxy: how many run, and the hand-off to them."""

    def __init__(self, metrics=None, max_active: int = MAX_RELAYS):
        self.metrics = metrics
        self.max_active = max_active
        self.active = 0

    def client_of(self, scope, send):
        """uvicorn's request cycle behind `send`, when its socket may be written directly."""
        if _UvicornCycle is None or self.active >= self.max_active or scope.get("scheme") != "http":
            return None
        cycle = getattr(send, "__self__", None)
        if type(cycle) is not _UvicornCycle:
            return None  # a wrapped send (middleware, test client, other server): normal path
        try:
            transport = cycle.transport
            if (
                cycle.response_started
                or cycle.disconnected
                or cycle.more_body
                or cycle.body
                or not isinstance(cycle.expected_content_length, int)
                or cycle.flow is None
                or transport.is_closing()
                or transport.get_extra_info("sslcontext") is not None
            ):
                return None
            sock = transport.get_extra_info("socket")
            if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.fileno() < 0:
                return None
        except Exception:  # noqa: BLE001 — anything unexpected about the server: normal path
            return None
        return cycle

    async def relay(self, cycle, conn, length: int) -> Progress | None:
        """Move the rest of `conn`'s body to the browser in a thread (the head is sent).

        None: not taken (nothing was touched; go on with the normal path). Otherwise the
        Progress: `error` None means the whole body went out and both connections are
        handed back in a reusable state.
        """
        transport = cycle.transport
        for _ in range(_FLUSH_TURNS):
            if cycle.disconnected or transport.is_closing():
                return None
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.0005)
        else:
            return None
        # No await from here until the thread owns the sockets.
        left = conn.body_left
        if (
            left is None
            or left <= 0
            or conn.closed
            or conn.error is not None
            or cycle.disconnected
            or transport.is_closing()
            or transport.get_write_buffer_size() != 0
            or cycle.expected_content_length != length
            or conn.body_length != length
        ):
            return None
        try:
            down_fd = os.dup(transport.get_extra_info("socket").fileno())
        except (OSError, AttributeError):
            return None
        try:
            up_fd = os.dup(conn.transport.get_extra_info("socket").fileno())
        except (OSError, AttributeError):
            os.close(down_fd)
            return None
        cycle.flow.pause_reading()
        pieces, left = conn.detach_body()
        progress = Progress()
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def work() -> None:
            try:
                _relay(up_fd, down_fd, pieces, left, progress, stop)
            except BaseException as exc:  # noqa: BLE001 — reported to the loop
                progress.error = exc
            finally:
                os.close(up_fd)
                os.close(down_fd)
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(finished)

        self.active += 1
        if self.metrics is not None:
            self.metrics.proxy_relays.inc()
        thread = threading.Thread(target=work, name="comfyhub-relay", daemon=True)
        try:
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: the sockets are ours to close
                os.close(up_fd)
                os.close(down_fd)
                progress.error = exc
                finished()
            await asyncio.shield(done)
        except BaseException:
            # Cancelled (shutdown, or the task was dropped): the thread ends within a slice;
            # neither connection is at a message boundary any more.
            stop.set()
            conn.close()
            transport.close()
            raise
        finally:
            if done.done() or not thread.is_alive():
                self._count_down()
            else:
                done.add_done_callback(lambda _: self._count_down())
        if progress.error is None and progress.sent == cycle.expected_content_length:
            # Both connections are at a message boundary again: uvicorn's count of body bytes
            # still to send drops by what the thread wrote, the instance connection reads again.
            cycle.expected_content_length -= progress.sent
            conn.body_relayed(left)
            self._outcome("done")
        else:
            if progress.error is None:
                progress.error = RuntimeError(f"relay wrote {progress.sent} of {cycle.expected_content_length} bytes")
            # A browser that left, an instance that broke off, a stall: the browser gets a short
            # body and a closed connection, as with any broken download; nothing is reused.
            conn.close()
            transport.close()
            self._outcome("stopped" if isinstance(progress.error, _Stopped) else "broken")
            log.debug("relay ended early after %d bytes: %r", progress.sent, progress.error)
        return progress

    def _outcome(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.proxy_relays_total.labels(outcome).inc()

    def _count_down(self) -> None:
        self.active -= 1
        if self.metrics is not None:
            self.metrics.proxy_relays.dec()


# --- the thread's side ----------------------------------------------------------------------


def _relay(up_fd: int, down_fd: int, pieces: list[bytes], left: int, progress: Progress, stop: threading.Event):
    waiter = _Waiter(stop)
    for piece in pieces:
        _write_all(down_fd, memoryview(piece), progress, waiter)
    if USE_SPLICE:
        try:
            return _splice(up_fd, down_fd, left, progress, waiter)
        except _SpliceUnsupported:
            pass
    _copy(up_fd, down_fd, left, progress, waiter)


class _SpliceUnsupported(Exception):
    pass


class _Waiter:
    """poll() in slices: returns when a side is ready, raises once stopped or stalled."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.progressed()

    def progressed(self) -> None:
        self.deadline = time.monotonic() + RELAY_STALL_TIMEOUT

    def wait(self, *interest: tuple[int, int]) -> None:
        poller = select.poll()
        for fd, event in interest:
            poller.register(fd, event)
        while True:
            if self.stop.is_set():
                raise _Stopped("relay stopped")
            if poller.poll(RELAY_SLICE * 1000):
                return  # ready, or an error/hang-up that the next call reports
            if time.monotonic() > self.deadline:
                raise TimeoutError("relay stalled")


def _write_all(down_fd: int, view: memoryview, progress: Progress, waiter: _Waiter) -> None:
    while view:
        try:
            n = os.write(down_fd, view)
        except BlockingIOError:
            waiter.wait((down_fd, select.POLLOUT))
            continue
        view = view[n:]
        progress.sent += n
        waiter.progressed()


def _copy(up_fd: int, down_fd: int, left: int, progress: Progress, waiter: _Waiter) -> None:
    """Read into one reusable buffer, write it out: no Python object per piece."""
    view = memoryview(bytearray(min(RELAY_BUF, left)))
    while left:
        try:
            n = os.readv(up_fd, [view[: min(len(view), left)]])
        except BlockingIOError:
            waiter.wait((up_fd, select.POLLIN))
            continue
        if n == 0:
            raise ConnectionError("instance closed the connection mid-body")
        waiter.progressed()
        left -= n
        _write_all(down_fd, view[:n], progress, waiter)


def _splice(up_fd: int, down_fd: int, left: int, progress: Progress, waiter: _Waiter) -> None:
    """socket → pipe → socket with splice(2): the bytes stay in the kernel."""
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        try:
            size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, RELAY_BUF)
        except OSError:  # above /proc/sys/fs/pipe-max-size: keep the default
            size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        in_pipe = 0
        first = True
        while left or in_pipe:
            moved = False
            take = bool(left) and in_pipe < size
            if take:
                try:
                    n = os.splice(up_fd, w, min(left, size - in_pipe), flags=flags)
                except BlockingIOError:
                    n = -1
                except OSError as exc:
                    if first and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise _SpliceUnsupported from exc  # nothing moved yet: copy instead
                    raise
                first = False
                if n == 0:
                    raise ConnectionError("instance closed the connection mid-body")
                if n > 0:
                    left -= n
                    in_pipe += n
                    moved = True
            if in_pipe:
                try:
                    m = os.splice(r, down_fd, in_pipe, flags=flags)
                except BlockingIOError:
                    m = 0
                if m > 0:
                    in_pipe -= m
                    progress.sent += m
                    moved = True
            if moved:
                waiter.progressed()
            elif in_pipe:
                # Wait for the browser only: with bytes in the pipe a read can also fail because
                # the pipe has no free slot (one per socket buffer, not per byte), and the
                # instance socket would then poll readable again at once, a busy loop.
                waiter.wait((down_fd, select.POLLOUT))
            else:
                waiter.wait((up_fd, select.POLLIN))
    finally:
        os.close(r)
        os.close(w)
