"""What the proxy sends upstream: Host kept, hop-by-hop dropped, comfyhub credentials removed."""

from comfyhub.proxy.rewrite import request_head as _request_head
from comfyhub.proxy.rewrite import response_headers as _response_headers
from comfyhub.proxy.rewrite import upstream_path as _upstream_path


def scope(headers, path="/comfy/7/api/prompt", query=b""):
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers,
        "client": ("10.1.2.3", 5555),
        "scheme": "http",
    }


def test_request_head_rewrites_only_what_it_must():
    s = scope(
        [
            (b"host", b"hub.example:8000"),
            (b"connection", b"keep-alive, x-custom"),
            (b"keep-alive", b"timeout=5"),
            (b"authorization", b"Bearer secret"),
            (b"cookie", b"comfyhub_session=abc; theme=dark; comfyhub_instance=1.all.f00"),
            (b"content-type", b"application/json"),
            (b"content-length", b"2"),
            (b"origin", b"http://hub.example:8000"),
            (b"x-forwarded-for", b"6.6.6.6"),
            (b"te", b"trailers"),
            (b"upgrade", b"h2c"),
        ]
    )
    head, chunked = _request_head(s, _upstream_path(s, 7))
    text = head.decode()
    assert text.startswith("POST /api/prompt HTTP/1.1\r\n")
    lines = text.split("\r\n")
    assert "host: hub.example:8000" in lines
    assert "origin: http://hub.example:8000" in lines
    assert "content-length: 2" in lines and not chunked
    assert "cookie: theme=dark" in lines
    assert "secret" not in text and "comfyhub_session" not in text and "comfyhub_instance" not in text
    assert "6.6.6.6" not in text and "x-forwarded-for: 10.1.2.3" in lines
    assert "x-forwarded-host: hub.example:8000" in lines and "x-forwarded-proto: http" in lines
    assert "x-forwarded-prefix: /comfy/7" in lines
    for hop in ("keep-alive: timeout=5", "te: trailers", "upgrade: h2c"):
        assert hop not in lines


def test_chunked_request_body_stays_chunked():
    s = scope([(b"host", b"h"), (b"transfer-encoding", b"chunked")])
    head, chunked = _request_head(s, b"/upload/image")
    assert chunked and b"transfer-encoding: chunked" in head


def test_query_string_and_encoded_path_are_kept():
    s = scope([(b"host", b"h")], path="/comfy/7/view", query=b"filename=a%20b.png&type=output")
    assert _upstream_path(s, 7) == b"/view?filename=a%20b.png&type=output"
    root = scope([(b"host", b"h")], path="/comfy/7/")
    assert _upstream_path(root, 7) == b"/"


def test_response_hop_by_hop_headers_are_dropped():
    out = _response_headers(
        [
            (b"Content-Type", b"text/html"),
            (b"Connection", b"close"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"5"),
        ]
    )
    assert out == [(b"content-type", b"text/html"), (b"content-length", b"5")]
