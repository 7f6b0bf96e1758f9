"""Webhook URLs cannot reach private, loopback, link-local or metadata addresses unless the admin allows it:
refused when saved (a 400 naming ``url``) and again when the connection is made (a host whose DNS changed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tunery.domain.errors import InvalidRequest
from tunery.services.outbound import UrlPolicy, check_url, guarded_client


class Resolver:
    """DNS for the tests: ``names`` maps a host to the addresses it resolves to now."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names

    def __call__(self, host: str, port: int) -> list[str]:
        if host not in self.names:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return self.names[host]


DNS = Resolver({
    "hooks.example.com": ["93.184.216.34"],
    "rebind.example.com": ["93.184.216.34", "169.254.169.254"],
    "localhost": ["127.0.0.1", "::1"],
    "intranet.corp": ["10.1.2.3"],
})  # fmt: skip


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://10.0.0.5/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://100.100.100.200/", "private"),  # carrier-grade NAT range; Alibaba's metadata service
        ("http://0.0.0.0/", "unspecified"),
        ("https://intranet.corp/hook", "resolves to 10.1.2.3"),
        ("https://rebind.example.com/hook", "resolves to 169.254.169.254"),  # one bad address is enough
        ("https://nowhere.invalid/hook", "does not resolve"),
        ("ftp://hooks.example.com/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("hooks.example.com/hook", "http:// or https://"),
        ("http://hooks.example.com:99999/", "port"),
    ],
)
def test_the_default_policy_refuses_what_is_not_public(url: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_url(url, UrlPolicy(), resolver=DNS)
    assert refused.value.param == "url"
    assert says in refused.value.message


def test_public_urls_pass_and_the_admin_may_allow_private_ones() -> None:
    assert check_url("https://hooks.example.com/h", UrlPolicy(), resolver=DNS) == "https://hooks.example.com/h"
    assert check_url("http://93.184.216.34:8443/h", UrlPolicy(), resolver=DNS)
    everything = UrlPolicy(allow_private=True)
    for url in ("http://127.0.0.1:9/h", "http://169.254.169.254/", "http://not-resolved.invalid/"):
        assert check_url(url, everything, resolver=DNS) == url
    some = UrlPolicy(allowed_hosts=("intranet.corp", "192.168.0.0/16"))
    assert check_url("https://intranet.corp/hook", some, resolver=DNS)
    assert check_url("http://192.168.7.9/hook", some, resolver=DNS)
    with pytest.raises(InvalidRequest, match="ALLOW_PRIVATE_URLS"):
        check_url("http://169.254.169.254/", some, resolver=DNS)


class Receiver:
    def __init__(self) -> None:
        self.hosts: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                receiver.hosts.append(self.headers["host"])
                self.send_response(302 if self.path == "/redirect" else 200)
                self.send_header("location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()


def test_the_connection_is_vetted_when_it_is_made(receiver: Receiver) -> None:
    """A name that passed when it was saved and now resolves to 127.0.0.1 (DNS rebinding) gets no request."""
    dns = Resolver({"hooks.example.com": ["93.184.216.34"]})
    url = f"http://hooks.example.com:{receiver.port}/hook"
    assert check_url(url, UrlPolicy(), resolver=dns) == url
    dns.names["hooks.example.com"] = ["127.0.0.1"]
    with guarded_client(UrlPolicy(), timeout=5, headers={}, resolver=dns) as client:
        with pytest.raises(httpx.ConnectError, match=r"resolves to 127\.0\.0\.1, a loopback address"):
            client.post(url, content=b"{}")
        with pytest.raises(httpx.ConnectError, match="loopback"):
            client.post(f"http://127.0.0.1:{receiver.port}/hook", content=b"{}")
    assert receiver.hosts == []

    allowed = UrlPolicy(allowed_hosts=("127.0.0.0/8",))
    with guarded_client(allowed, timeout=5, headers={}, resolver=dns) as client:
        assert client.post(url, content=b"{}").status_code == 200
        # the request went to the vetted address under the URL's own host name
        assert receiver.hosts == [f"hooks.example.com:{receiver.port}"]
        redirected = client.post(f"http://hooks.example.com:{receiver.port}/redirect", content=b"{}")
        assert redirected.status_code == 302  # not followed to the metadata address
    assert len(receiver.hosts) == 2
