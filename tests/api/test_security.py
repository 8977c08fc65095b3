"""The token and Origin rules that the API and the proxy share (comfyhub/security.py)."""

import pytest

from comfyhub.security import cookie_value, origin_required, same_origin, session_token

TRUSTED = {"https://hub.example.org"}


@pytest.mark.parametrize(
    ("authorization", "cookie", "expected"),
    [
        ("Bearer abc", "comfyhub_session=xyz", ("abc", False)),  # the header wins
        ("bearer  abc ", "", ("abc", False)),
        ("Bearer ", "comfyhub_session=xyz", ("xyz", True)),  # an empty bearer is no bearer
        ("Basic abc", "comfyhub_session=xyz", ("xyz", True)),
        ("", "ui=dark mode; comfyhub_session=xyz", ("xyz", True)),  # a malformed neighbour
        ("", 'prefs={"a":1,"b":2}; comfyhub_session="xyz"', ("xyz", True)),  # JSON, quotes
        ("", "comfyhub_session=; comfyhub_session=xyz", ("xyz", True)),  # the first non-empty one
        ("", "other_comfyhub_session=xyz", (None, False)),
        ("", "comfyhub_session=", (None, False)),
        ("", "", (None, False)),
    ],
)
def test_session_token(authorization, cookie, expected):
    assert session_token(authorization, cookie) == expected


def test_cookie_value_takes_the_named_cookie_only():
    assert cookie_value("a=1; b = 2 ;c=3", "b") == "2"
    assert cookie_value("a=1; b", "b") is None
    assert cookie_value('a="', "a") == '"'  # a lone quote is a value, not quoting


@pytest.mark.parametrize(
    ("from_cookie", "method", "websocket", "expected"),
    [
        (True, "POST", False, True),
        (True, "DELETE", False, True),
        (True, "GET", False, False),
        (True, "HEAD", False, False),
        (True, "OPTIONS", False, False),
        (True, "GET", True, True),  # browsers send WebSocket handshakes cross-site with cookies
        (False, "POST", False, False),  # a bearer token is never sent by the browser on its own
        (False, "GET", True, False),
    ],
)
def test_origin_required(from_cookie, method, websocket, expected):
    assert origin_required(from_cookie, method, websocket=websocket) is expected


@pytest.mark.parametrize(
    ("origin", "referer", "host", "expected"),
    [
        ("http://hub:8000", None, "hub:8000", True),
        (None, "http://hub:8000/projects?x=1", "hub:8000", True),
        ("http://hub:8001", None, "hub:8000", False),  # another port of the same host
        ("http://evil.example", "http://hub:8000/", "hub:8000", False),  # Origin wins over Referer
        ("null", "http://hub:8000/", "hub:8000", False),
        (None, None, "hub:8000", False),
        ("https://hub.example.org", None, "127.0.0.1:8000", True),  # trusted front proxy
        ("http://hub.example.org", None, "127.0.0.1:8000", False),  # trusted means that scheme too
    ],
)
def test_same_origin(origin, referer, host, expected):
    assert same_origin(origin, referer, host, TRUSTED) is expected
