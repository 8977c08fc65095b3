"""Large downloads relayed socket to socket in a thread (comfyhub/proxy/relay.py).

Through a live `comfyhub serve` (uvicorn with httptools, as deployed): a large
Content-Length answer goes through the relay with the right bytes and flat memory; the
client connection stays usable afterwards (keep-alive); a browser that leaves mid-download
leaves no relay thread, descriptor or instance connection behind; small, chunked and HEAD
answers keep the normal path. The thread's loops themselves are checked on socket pairs.
"""

import hashlib
import os
import socket
import threading

import psutil
import pytest

from comfyhub.proxy import relay
from tests.support.net import wait_for_sync

MB = 1 << 20
BIG = 50 * MB


class RawClient:
    """One keep-alive HTTP/1.1 connection with the session cookie; reads exactly what is framed."""

    def __init__(self, hub, rcvbuf: int | None = None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", hub.server.instance_port))
        self.host = f"127.0.0.1:{hub.server.instance_port}"
        self.cookie = hub.cookie_header("alice")
        self.buf = b""

    def request(self, method: str, path: str) -> None:
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nCookie: {self.cookie}\r\n\r\n".encode())

    def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            assert data, "connection closed before the response head"
            self.buf += data
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split(" ", 2)[1]), headers

    def body(self, length: int, digest=None) -> int:
        got = len(self.buf[:length])
        if digest is not None:
            digest.update(self.buf[:length])
        self.buf = self.buf[length:]
        view = memoryview(bytearray(MB))
        while got < length:
            n = self.sock.recv_into(view, min(MB, length - got))
            assert n, f"connection closed after {got} of {length} body bytes"
            if digest is not None:
                digest.update(view[:n])
            got += n
        return got

    def content(self, length: int) -> bytes:
        while len(self.buf) < length:
            data = self.sock.recv(65536)
            assert data, "connection closed mid-body"
            self.buf += data
        out, self.buf = self.buf[:length], self.buf[length:]
        return out

    def chunked_body(self) -> bytes:
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self.buf += self.sock.recv(65536)
            line, self.buf = self.buf.split(b"\r\n", 1)
            size = int(line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                self.buf += self.sock.recv(65536)
            out, self.buf = out + self.buf[:size], self.buf[size + 2 :]
            if size == 0:
                return out

    def close(self) -> None:
        self.sock.close()


def metric(hub, name: str, labels: str = "") -> float:
    with hub.client() as c:
        text = c.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def relays_done(hub) -> float:
    return metric(hub, "comfyhub_proxy_relays_total", '{outcome="done"}')


@pytest.fixture(scope="module")
def big(hub):
    body = os.urandom(BIG)
    (hub.base / "output" / "big.bin").write_bytes(body)
    return hashlib.sha256(body).hexdigest()


def _view(hub, name: str = "big.bin") -> str:
    return f"/comfy/{hub.project}/view?filename={name}&type=output"


def test_large_download_is_relayed_with_right_bytes_and_flat_memory(hub, big):
    server = psutil.Process(hub.server.proc.pid)
    client = RawClient(hub)
    client.request("GET", f"/comfy/{hub.project}/api/system_stats")  # warm up: route and session cached
    status, headers = client.head()
    client.body(int(headers["content-length"]))
    done, sent = relays_done(hub), metric(hub, "comfyhub_proxy_bytes_total", '{direction="out"}')
    before = server.memory_info().rss
    peak, stop = [before], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            stop.wait(0.005)  # the memory probe's sampling interval

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        client.request("GET", _view(hub))
        status, headers = client.head()
        digest = hashlib.sha256()
        assert status == 200 and int(headers["content-length"]) == BIG
        assert client.body(BIG, digest) == BIG
    finally:
        stop.set()
        watcher.join()
        client.close()
    assert digest.hexdigest() == big
    assert peak[0] - before < 20 * MB, f"comfyhub grew by {(peak[0] - before) / MB:.1f} MB for a 50 MB body"
    assert relays_done(hub) == done + 1, "the download did not take the relay"
    assert metric(hub, "comfyhub_proxy_bytes_total", '{direction="out"}') >= sent + BIG


def test_keep_alive_after_a_relayed_download(hub, big):
    client = RawClient(hub)
    done = relays_done(hub)
    try:
        for _ in range(2):  # two relayed downloads and a small answer, all on one connection
            client.request("GET", _view(hub))
            status, headers = client.head()
            assert status == 200 and "close" not in headers.get("connection", "")
            digest = hashlib.sha256()
            client.body(int(headers["content-length"]), digest)
            assert digest.hexdigest() == big
            client.request("GET", f"/comfy/{hub.project}/api/system_stats")
            status, headers = client.head()
            assert status == 200 and b"argv" in client.content(int(headers["content-length"]))
    finally:
        client.close()
    assert relays_done(hub) == done + 2


def _upstream_connections(server: psutil.Process, port: int) -> int:
    return sum(
        1
        for c in server.net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def _half_read_upstream(port: int) -> int:
    """Connections to the instance with body bytes nobody reads (kernel receive queue > 0).

    An idle pooled connection has none; one left open after an aborted relay keeps what
    the instance went on sending.
    """
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                rx_queue = int(fields[4].split(":")[1], 16)
                if remote_port == port and fields[3] == "01" and rx_queue > 0:
                    count += 1
    return count


def test_client_leaving_mid_download_leaves_nothing_behind(hub, big):
    server = psutil.Process(hub.server.proc.pid)
    broken = metric(hub, "comfyhub_proxy_relays_total", '{outcome="broken"}')
    # Baseline after a finished relayed download: its thread is gone, its instance connection idle.
    warm = RawClient(hub)
    warm.request("GET", _view(hub))
    warm.body(int(warm.head()[1]["content-length"]))
    warm.close()
    wait_for_sync(lambda: metric(hub, "comfyhub_proxy_relays_active") == 0, timeout=10, what="no relay running")
    threads, fds = server.num_threads(), server.num_fds()
    upstream = _upstream_connections(server, hub.port)

    client = RawClient(hub, rcvbuf=64 * 1024)
    client.request("GET", _view(hub))
    assert client.head()[0] == 200
    client.body(2 * MB)
    assert metric(hub, "comfyhub_proxy_relays_active") == 1, "the download is not in a relay thread"
    wait_for_sync(lambda: _half_read_upstream(hub.port) == 1, timeout=10, what="the relay to fill its buffers")
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # with unread data: the server's next write fails at once

    wait_for_sync(lambda: metric(hub, "comfyhub_proxy_relays_active") == 0, timeout=10, what="the relay to end")
    assert metric(hub, "comfyhub_proxy_relays_total", '{outcome="broken"}') == broken + 1
    wait_for_sync(lambda: server.num_threads() <= threads, timeout=10, what="the relay thread to go")
    wait_for_sync(lambda: server.num_fds() <= fds, timeout=10, what="the descriptors to be closed")
    # The half-read instance connection is closed, not pooled or left open.
    wait_for_sync(lambda: _half_read_upstream(hub.port) == 0, timeout=10, what="the instance connection to close")
    wait_for_sync(
        lambda: _upstream_connections(server, hub.port) <= upstream,
        timeout=10,
        what="no more instance connections than before",
    )
    # And the proxy goes on as before.
    again = RawClient(hub)
    again.request("GET", _view(hub))
    digest = hashlib.sha256()
    again.body(int(again.head()[1]["content-length"]), digest)
    again.close()
    assert digest.hexdigest() == big


def test_small_chunked_and_head_answers_keep_the_normal_path(hub, big):
    small = os.urandom(300 * 1024)
    (hub.base / "output" / "small.bin").write_bytes(small)
    done = relays_done(hub)
    client = RawClient(hub)
    try:
        client.request("GET", _view(hub, "small.bin"))
        status, headers = client.head()
        digest = hashlib.sha256()
        client.body(int(headers["content-length"]), digest)
        assert status == 200 and digest.hexdigest() == hashlib.sha256(small).hexdigest()

        client.request("HEAD", _view(hub))
        status, headers = client.head()
        assert status == 200 and int(headers["content-length"]) == BIG
        client.request("GET", f"/comfy/{hub.project}/api/system_stats")  # no body came after the HEAD
        status, headers = client.head()
        assert status == 200
        client.body(int(headers["content-length"]))

        # A chunked answer (the fake's /echo streams the request body back chunked).
        payload = os.urandom(3 * MB)
        client.sock.sendall(
            f"POST /comfy/{hub.project}/echo HTTP/1.1\r\nHost: {client.host}\r\n"
            f"Cookie: {client.cookie}\r\nOrigin: {hub.comfy}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        status, headers = client.head()
        assert status == 200 and headers.get("transfer-encoding") == "chunked"
        assert client.chunked_body() == payload
    finally:
        client.close()
    assert relays_done(hub) == done


# --- the thread's loops, on socket pairs -------------------------------------------------


@pytest.mark.parametrize("splice", [True, False])
def test_relay_loop_moves_exactly_the_body(monkeypatch, splice):
    """Exactly `left` bytes move, after the pieces already read; what follows stays unread."""
    if splice and not hasattr(os, "splice"):
        pytest.skip("no os.splice here")
    monkeypatch.setattr(relay, "USE_SPLICE", splice)
    up_in, up_out = socket.socketpair()
    down_in, down_out = socket.socketpair()
    for s in (up_out, down_in):
        s.setblocking(False)
    body, after = os.urandom(5 * MB + 123), b"NEXT RESPONSE"
    pieces = [body[:1000], body[1000:70000]]
    got = bytearray()
    feeder = threading.Thread(target=lambda: up_in.sendall(body[70000:] + after))
    reader = threading.Thread(target=lambda: _read_exactly(down_out, len(body), got))
    feeder.start()
    reader.start()
    progress = relay.Progress()
    relay._relay(up_out.fileno(), down_in.fileno(), pieces, len(body) - 70000, progress, threading.Event())
    feeder.join(10)
    reader.join(10)
    assert progress.sent == len(body) and bytes(got) == body
    up_out.setblocking(True)
    assert up_out.recv(100) == after
    for s in (up_in, up_out, down_in, down_out):
        s.close()


def test_relay_loop_stops_when_asked_and_reports_a_closed_side():
    up_in, up_out = socket.socketpair()
    down_in, down_out = socket.socketpair()
    for s in (up_out, down_in):
        s.setblocking(False)
    stop = threading.Event()
    stop.set()  # nothing arrives from the instance: the stop flag ends the wait
    with pytest.raises(relay._Stopped):
        relay._relay(up_out.fileno(), down_in.fileno(), [], 10, relay.Progress(), stop)
    up_in.close()  # the instance goes away mid-body
    with pytest.raises(ConnectionError):
        relay._relay(up_out.fileno(), down_in.fileno(), [], 10, relay.Progress(), threading.Event())
    for s in (up_out, down_in, down_out):
        s.close()


def test_only_uvicorns_own_send_is_relayed():
    async def send(message):
        pass

    relays = relay.Relays()
    assert relays.client_of({"scheme": "http"}, send) is None
    assert relays.client_of({"scheme": "https"}, send) is None


def _read_exactly(sock: socket.socket, n: int, into: bytearray) -> None:
    while len(into) < n:
        data = sock.recv(min(MB, n - len(into)))
        if not data:
            return
        into += data
