"""The sender's SSRF guard on the resolution path: the addresses a name resolves to are
checked, and the connection goes to a checked address (DNS rebinding cannot slip by)."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterator

import httpx
import pytest
import trustme

from fluxrun.errors import CallbackRefused
from fluxrun.netguard import Allowlist, IPAddress
from fluxrun.worker.webhooks import WebhookSender, resolve
from tests.integration.receiver import Receiver

HEADERS = {"webhook-id": "msg_x", "webhook-timestamp": "0", "webhook-signature": "v1,x"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


class Dns:
    """A resolver for names the test makes up, answering what the real resolver answers
    for ``localhost`` (loopback): a public-looking name that points at this machine. It
    answers differently on later lookups, as a rebinding attacker's DNS server does."""

    def __init__(self, *later: list[str]) -> None:
        self.later = [[ipaddress.ip_address(a) for a in answer] for answer in later]
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        if len(self.lookups) > 1 and self.later:
            return self.later.pop(0)
        return resolve("localhost", port)


def test_a_name_that_resolves_to_loopback_is_refused_and_never_contacted(receiver: Receiver) -> None:
    dns = Dns()
    sender = WebhookSender(Allowlist(), timeout=5, resolver=dns)
    with pytest.raises(CallbackRefused, match=r"'hooks\.example\.com' resolves to 127\.0\.0\.1, a loopback address"):
        sender.post(receiver.url(host="hooks.example.com"), "{}", HEADERS)
    assert dns.lookups == ["hooks.example.com"] and receiver.requests == []


def test_one_forbidden_address_among_public_ones_refuses_the_name(receiver: Receiver) -> None:
    def dns(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("169.254.169.254")]

    with pytest.raises(CallbackRefused, match="cloud metadata"):
        WebhookSender(Allowlist(), timeout=5, resolver=dns).post(receiver.url(host="hooks.example.com"), "{}", HEADERS)


def test_the_connection_goes_to_the_checked_address_with_the_original_host(receiver: Receiver) -> None:
    # Allowed by network, the name resolves once; a second lookup would say 10.0.0.1 (a
    # rebinding answer) and must never be made.
    dns = Dns(["10.0.0.1"])
    sender = WebhookSender(Allowlist.parse("127.0.0.0/8"), timeout=5, resolver=dns)
    status = sender.post(receiver.url("/in?x=1", host="hooks.example.com"), '{"a":1}', HEADERS)
    assert status == 200 and dns.lookups == ["hooks.example.com"]
    [request] = receiver.requests
    assert request.path == "/in?x=1" and request.body == b'{"a":1}'
    assert request.headers["host"] == f"hooks.example.com:{receiver.port}"
    assert request.headers["webhook-id"] == "msg_x" and request.headers["content-type"] == "application/json"


def test_a_host_allowed_by_name_may_resolve_to_loopback(receiver: Receiver) -> None:
    sender = WebhookSender(Allowlist.parse("localhost"), timeout=5)
    assert sender.post(receiver.url(host="localhost"), "{}", HEADERS) == 200
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(("certified", "accepted"), [("hooks.example.com", True), ("other.example.com", False)])
def test_https_connects_to_the_checked_address_and_checks_the_certificate_against_the_name(
    certified: str, accepted: bool
) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(certified).configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    receiver = Receiver(tls=server_tls)
    try:
        sender = WebhookSender(Allowlist.parse("127.0.0.1"), timeout=5, resolver=Dns(), verify=client_tls)
        url = receiver.url(host="hooks.example.com")
        if accepted:
            assert sender.post(url, "{}", HEADERS) == 200
            [request] = receiver.requests
            assert request.headers["host"] == f"hooks.example.com:{receiver.port}"
        else:  # a certificate for another name: refused although the address is the same
            with pytest.raises(httpx.ConnectError, match="certificate|hostname"):
                sender.post(url, "{}", HEADERS)
            assert receiver.requests == []
    finally:
        receiver.close()
