"""One callback try: sign the body the Standard Webhooks way, and POST it to an address the
SSRF guard has checked.

DNS rebinding is why the guard cannot stop at the URL: a name that resolves to a public
address when checked may resolve to 127.0.0.1 when connected. So the sender resolves the
name once, checks every address (fluxrun.netguard), and connects to a checked address
itself; the request keeps the original Host header, and for https the original name is the
TLS server name, so certificates are still checked against it.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from datetime import datetime, timezone

import httpx
from standardwebhooks import Webhook

from fluxrun import __version__
from fluxrun.errors import CallbackRefused
from fluxrun.netguard import Allowlist, IPAddress, check_url, parse_ip, refusal, resolved_problem

Resolver = Callable[[str, int], list[IPAddress]]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def signature_headers(secret: str, webhook_id: str, timestamp: int, body: str) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of
    "{id}.{timestamp}.{body}">`` with the project's ``whsec_`` secret."""
    when = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": Webhook(secret).sign(webhook_id, when, body),
    }


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order of preference."""
    found: list[IPAddress] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


class WebhookSender:
    """POSTs callbacks; one instance per deliverer thread."""

    def __init__(
        self, allow: Allowlist, timeout: float, resolver: Resolver = resolve, verify: ssl.SSLContext | bool = True
    ) -> None:
        self.allow = allow
        self.resolver = resolver
        # No redirects (a 3xx is a failed try: following one would leave the checked address);
        # no proxies from the environment (the connection must go to the checked address);
        # no kept-alive connections (a pooled connection would skip the check).
        self._client = httpx.Client(
            timeout=timeout,
            verify=verify,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"user-agent": f"fluxrun/{__version__} (callbacks)"},
        )

    def close(self) -> None:
        self._client.close()

    def post(self, url: str, body: str, headers: dict[str, str]) -> int:
        """The HTTP status of the answer. Raises CallbackRefused when the guard refuses the
        URL (never worth retrying), httpx.HTTPError or OSError when the try failed."""
        check_url(url, self.allow)  # the rules that need no DNS, before any lookup
        target = httpx.URL(url)
        host = target.raw_host.decode("ascii")
        addresses = self.resolver(host, target.port or _DEFAULT_PORTS[target.scheme])
        if not addresses:
            raise OSError(f"{host!r} resolved to no address")
        for address in addresses:  # every one: a name with one bad address is refused
            problem = resolved_problem(host, address, self.allow)
            if problem:
                raise CallbackRefused(refusal(problem))
        last_error: httpx.ConnectError | None = None
        for address in addresses:
            try:
                return self._post_to(target, host, address, body, headers)
            except httpx.ConnectError as exc:  # the next address may answer
                last_error = exc
        assert last_error is not None
        raise last_error

    def _post_to(self, target: httpx.URL, host: str, address: IPAddress, body: str, headers: dict[str, str]) -> int:
        pinned = target.copy_with(host=str(address))
        extensions = {"sni_hostname": host} if target.scheme == "https" and parse_ip(host) is None else {}
        request = self._client.build_request(
            "POST",
            pinned,
            content=body.encode("utf-8"),
            headers={**headers, "content-type": "application/json", "host": target.netloc.decode("ascii")},
            extensions=extensions,
        )
        # Only the status matters: the answer's body is never read.
        response = self._client.send(request, stream=True)
        response.close()
        return response.status_code
