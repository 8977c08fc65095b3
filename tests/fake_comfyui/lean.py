"""Lean fake ComfyUI: the stand-in for scale runs, light enough for a thousand per machine.

Run exactly like main.py, with the same flags: ``python lean.py --listen H --port P
--disable-auto-launch --base-directory DIR [--database-url sqlite:///DIR/user/x.db]``
(unknown flags are accepted and ignored). comfyhub runs ``main.py`` in
COMFYUI_REPO_PATH, so a scale run copies this file as ``main.py`` into a folder of its
own and points COMFYUI_REPO_PATH there (bench/scale.py does).

Why a second stand-in: main.py imports aiohttp and costs ~38 MB of RSS per process;
a thousand of them do not fit a 24 GB machine. This one uses no web framework and
only C modules beyond the interpreter's own start-up (``_socket``, ``select``,
``_signal``: not even ``socket``, ``json`` or ``re``), one epoll loop and hand-written
JSON: about 9 MB RSS with an interpreter that loads no site-packages (a bare venv),
of which ~6 MB are the interpreter's shared file pages.

What it answers (each also under ``/api/``), HTTP/1.1 with keep-alive:

* ``GET /system_stats`` — like ComfyUI's, with ``system.argv`` (the heartbeat's
  "is it ours" check) and one device per ``CUDA_VISIBLE_DEVICES`` id (else one cpu);
* ``GET /queue`` — ``{"queue_running": [], "queue_pending": []}``;
* ``GET /history`` and ``GET /history?max_items=N`` — ``{}``; ``GET /history/{id}`` — ``{}``;
* ``GET /`` — a tiny page titled "Lean fake ComfyUI"; anything else 404.

Kept from main.py (and from ComfyUI): exits 1 with a traceback if ``DIR/custom_nodes``
does not exist; creates ``DIR/{models,input,output,user,temp}`` and touches the
``--database-url`` SQLite file; logs to stderr only; a taken port makes it exit 1 with
``address already in use``; SIGINT logs "Stopped server" and exits 0 at once (unless
SIGINT was ignored when it started); SIGTERM has its default action.

comfyhub's extension (comfyhub/comfyui_extension) is not loaded and the secret header is
not checked, but the identity is told as the extension tells it: with
``COMFYHUB_SECRET_FILE`` set, every answer carries ``X-Comfyhub-Instance: sha256(secret)``
and an empty ``X-Comfyhub-Binding`` (two header lines computed once at start), so the
heartbeat counts the instance as ours.

Not kept: the behaviour knobs (``FAKE_COMFYUI_*`` are ignored), prompts, uploads,
``/view``, WebSockets, the Origin check, wiping ``DIR/temp``. Tests that need those use
main.py.
"""

import _signal
import _socket
import os
import select
import sys

VERSION = "0.3.64-fake-lean"
MAX_HEAD = 64 << 10

_SIGINT_IGNORED = _signal.getsignal(_signal.SIGINT) == _signal.SIG_IGN


def log(message):
    os.write(2, (message + "\n").encode("utf-8", "replace"))


def _stop_on_sigint(*_args):
    log("\nStopped server")
    os._exit(0)


if not _SIGINT_IGNORED:
    _signal.signal(_signal.SIGINT, _stop_on_sigint)


# --- command line (argparse would import re, gettext and more) -----------------------------


def parse_args(argv):
    """--listen [H], --port P, --base-directory DIR, --database-url URL; the rest is ignored."""
    args = {"listen": "127.0.0.1", "port": 8188, "base_directory": None, "database_url": None}
    i = 0
    while i < len(argv):
        flag, eq, inline = argv[i].partition("=")
        value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        takes = 0 if eq else 1
        if flag == "--listen":
            if eq:
                args["listen"] = inline
            elif value is None or value.startswith("--"):
                args["listen"], takes = "0.0.0.0,::", 0
            else:
                args["listen"] = value
        elif flag in ("--port", "--base-directory", "--database-url"):
            if value is None:
                log(f"main.py: error: argument {flag}: expected one argument")
                sys.exit(2)
            args[flag[2:].replace("-", "_")] = value
        else:
            takes = 0
        i += 1 + takes
    try:
        args["port"] = int(args["port"])
    except ValueError:
        log(f"main.py: error: argument --port: invalid int value: {args['port']!r}")
        sys.exit(2)
    return args


# --- JSON, by hand (the json module imports re) ----------------------------------------------


def to_json(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(_json_string(str(k)) + ":" + to_json(v) for k, v in value.items()) + "}"
    raise TypeError(f"not JSON: {type(value).__name__}")


def _json_string(text):
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 for c in text):
        text = "".join(c if ord(c) >= 0x20 else f"\\u{ord(c):04x}" for c in text)
    return '"' + text + '"'


# --- the answers -------------------------------------------------------------------------------


def devices():
    ids = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    ids = [x for x in ids if not x.startswith("-")]
    if not ids:
        return [
            {
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": 0,
                "vram_free": 0,
                "torch_vram_total": 0,
                "torch_vram_free": 0,
            }
        ]
    gib16 = 16 * 1024**3
    return [
        {
            "name": f"fake-cuda:{dev}",
            "type": "cuda",
            "index": i,
            "vram_total": gib16,
            "vram_free": gib16,
            "torch_vram_total": 0,
            "torch_vram_free": 0,
        }
        for i, dev in enumerate(ids)
    ]


def system_stats_body():
    """Built once: nothing in it changes while the process runs (RAM figures are the start's)."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        ram_total = os.sysconf("SC_PHYS_PAGES") * page
        ram_free = os.sysconf("SC_AVPHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):
        ram_total = ram_free = 0
    stats = {
        "system": {
            "os": os.name,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": VERSION,
            "required_frontend_version": "0.0.0-fake",
            "python_version": sys.version,
            "pytorch_version": "fake",
            "embedded_python": False,
            "argv": sys.argv,
        },
        "devices": devices(),
    }
    return to_json(stats).encode("utf-8")


INDEX = (
    b"<!doctype html><html><head><meta charset='utf-8'><title>Lean fake ComfyUI</title></head>"
    b"<body><h1>Lean fake ComfyUI</h1></body></html>"
)
QUEUE = b'{"queue_running": [], "queue_pending": []}'
EMPTY = b"{}"


def answer(method, target, stats):
    """(status, content type, body) for one request."""
    path = target.split("?", 1)[0]
    if path.startswith("/api/"):
        path = path[4:]
    if method not in ("GET", "HEAD"):
        return 405, "application/json", b'{"error": "method not allowed"}'
    if path == "/system_stats":
        return 200, "application/json", stats
    if path == "/queue":
        return 200, "application/json", QUEUE
    if path == "/history" or path.startswith("/history/"):
        return 200, "application/json", EMPTY
    if path == "/":
        return 200, "text/html", INDEX
    return 404, "text/plain", b"404: Not Found"


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large", 501: "?"}


IDENTITY = ""  # the extension's identity header lines, set in main()


def identity_lines():
    """What comfyhub's extension adds to every answer; "" without a secret."""
    path = os.environ.get("COMFYHUB_SECRET_FILE")
    if not path:
        return ""
    try:
        import _sha2 as sha  # C modules, unlike hashlib (3.12+)
    except ImportError:
        import _sha256 as sha  # Python 3.11
    fd = os.open(path, os.O_RDONLY)
    try:
        secret = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    return f"X-Comfyhub-Instance: {sha.sha256(secret).hexdigest()}\r\nX-Comfyhub-Binding: \r\n"


def response(status, kind, body, close, head_only=False):
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
        f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n{IDENTITY}"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    ).encode("latin-1")
    return head if head_only else head + body


# --- the server: one epoll loop, keep-alive, no threads ----------------------------------------


class Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "closing")

    def __init__(self, sock):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False


def handle_requests(conn, stats):
    """Answer every complete request in conn.inbuf (pipelining included)."""
    while not conn.closing:
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbuf) > MAX_HEAD:
                conn.outbuf += response(431, "text/plain", b"request head too large", True)
                conn.closing = True
            return
        lines = bytes(conn.inbuf[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            conn.outbuf += response(400, "text/plain", b"bad request line", True)
            conn.closing = True
            return
        method, target, version = parts
        length, close = 0, version == "HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value) if value.isdigit() else -1
            elif name == "transfer-encoding":
                length = -1  # chunked request bodies are never sent to ComfyUI's GET routes
            elif name == "connection":
                close = "close" in value or (close and "keep-alive" not in value)
        if length < 0:
            conn.outbuf += response(501, "text/plain", b"request body framing not supported", True)
            conn.closing = True
            return
        if len(conn.inbuf) < end + 4 + length:
            return  # the body is still coming
        del conn.inbuf[: end + 4 + length]
        status, kind, body = answer(method, target, stats)
        conn.outbuf += response(status, kind, body, close, head_only=method == "HEAD")
        conn.closing = close


def _literal(host, port):
    """getaddrinfo's answer for a numeric address, without calling it: the resolver
    loads its NSS modules and keeps ~1 MB, a tenth of this process."""
    for family, addr in ((_socket.AF_INET, (host, port)), (_socket.AF_INET6, (host, port, 0, 0))):
        try:
            _socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, _socket.SOCK_STREAM, _socket.IPPROTO_TCP, "", addr)]
    return None


def bind_sockets(listen, port):
    """Bind every address of --listen, like main.py. Exits 1 (address already in use) on failure."""
    socks, seen = [], set()
    for host in [h.strip() for h in listen.split(",") if h.strip()]:
        infos = _literal(host, port)
        if infos is None:
            try:
                infos = _socket.getaddrinfo(host, port, _socket.AF_UNSPEC, _socket.SOCK_STREAM, 0, _socket.AI_PASSIVE)
            except _socket.gaierror as exc:
                log(f"socket.gaierror: {exc}")
                os._exit(1)
        for family, kind, proto, _canon, addr in infos:
            if (family, addr[:2]) in seen:
                continue
            seen.add((family, addr[:2]))
            sock = _socket.socket(family, kind, proto)
            try:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
                if family == _socket.AF_INET6:
                    sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(128)
            except OSError as exc:
                sock.close()
                log(
                    "Traceback (most recent call last):\n"
                    '  File "main.py", line 1, in <module>\n'
                    f"OSError: [Errno {exc.errno}] error while attempting to bind on address "
                    f"{addr[:2]!r}: {(exc.strerror or '').lower()}"
                )
                os._exit(1)
            sock.setblocking(False)
            socks.append(sock)
    if not socks:
        log("[fake_comfyui] nothing to listen on")
        os._exit(1)
    return socks


def serve(socks, stats):
    poller = select.epoll()
    listeners = {s.fileno(): s for s in socks}
    conns = {}
    for fd in listeners:
        poller.register(fd, select.EPOLLIN)

    def close(fd):
        conn = conns.pop(fd)
        poller.unregister(fd)
        conn.sock.close()

    while True:
        for fd, events in poller.poll():
            if fd in listeners:
                while True:
                    try:
                        new_fd, _addr = listeners[fd]._accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # e.g. out of descriptors: the client retries
                    sock = _socket.socket(fileno=new_fd)
                    sock.setblocking(False)
                    sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                    conns[new_fd] = Conn(sock)
                    poller.register(new_fd, select.EPOLLIN)
                continue
            conn = conns.get(fd)
            if conn is None:
                continue
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                try:
                    data = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    close(fd)
                    continue
                if data:
                    conn.inbuf += data
                    handle_requests(conn, stats)
            if conn.outbuf:
                try:
                    sent = conn.sock.send(conn.outbuf)
                    del conn.outbuf[:sent]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    close(fd)
                    continue
            if not conn.outbuf and conn.closing:
                close(fd)
            else:
                poller.modify(fd, select.EPOLLIN | (select.EPOLLOUT if conn.outbuf else 0))


def prepare_folders(base, database_url):
    for name in ("models", "input", "output", "user", "temp"):
        try:
            os.makedirs(os.path.join(base, name), exist_ok=True)
        except FileExistsError:  # e.g. a dangling symlink: not ours to fix
            pass
    if database_url and database_url.startswith("sqlite:///"):
        path = database_url[len("sqlite:///") :].split("?", 1)[0]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "ab"):
                pass


def main():
    global IDENTITY
    args = parse_args(sys.argv[1:])
    here = os.path.dirname(os.path.abspath(__file__))
    base = os.path.abspath(args["base_directory"]) if args["base_directory"] else here
    custom_nodes = os.path.join(base, "custom_nodes")
    if not os.path.isdir(custom_nodes):
        log(
            "Traceback (most recent call last):\n"
            '  File "nodes.py", line 2000, in init_external_custom_nodes\n'
            "    possible_modules = os.listdir(os.path.realpath(custom_node_path))\n"
            f"FileNotFoundError: [Errno 2] No such file or directory: '{custom_nodes}'"
        )
        sys.exit(1)
    prepare_folders(base, args["database_url"])
    log(f"ComfyUI version: {VERSION}")
    log(f"[fake_comfyui] lean; pid {os.getpid()} base directory {base}")
    stats = system_stats_body()
    IDENTITY = identity_lines()
    socks = bind_sockets(args["listen"], args["port"])
    first = args["listen"].split(",")[0].strip() or "127.0.0.1"
    log("Starting server\n")
    log(f"To see the GUI go to: http://{'[' + first + ']' if ':' in first else first}:{args['port']}")
    serve(socks, stats)


if __name__ == "__main__":
    main()
