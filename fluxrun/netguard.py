"""Which addresses a callback may reach: the SSRF rules, pure (no DNS, no sockets).

A callback URL comes from the client, so without rules a client could make the server
POST to its own loopback services, the private network behind it, or the cloud metadata
endpoint. The worker resolves the host once, checks EVERY address with
``address_problem`` and connects to the checked address (fluxrun.worker.webhooks); the API
checks at Run what needs no DNS (``literal_problem``). Both use the rules below.

Hosts are read the way browsers and ``inet_aton`` read them, so no spelling slips through:
``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``, ``127.0.0.1.``, ``[::1]``,
``[::ffff:127.0.0.1]``, and addresses embedded in IPv6 (IPv4-mapped, 6to4, NAT64).
The operator may allow hosts or networks by name (FLUXRUN_CALLBACK_ALLOW).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fluxrun.errors import CallbackRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")
ALLOW_SETTING = "FLUXRUN_CALLBACK_ALLOW"

# Instance metadata services: credentials live there. Named first so the reason says so.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "fd00:ec2::254",  # AWS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
    )
)

# (network, rule), checked in order; the first match names the rule.
_RULES: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), rule)
    for net, rule in (
        ("0.0.0.0/8", "unspecified ('this network')"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "carrier-grade NAT (RFC 6598)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes the broadcast address
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private (unique local, RFC 4193)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# Names that mean this machine whatever DNS says (RFC 6761 reserves *.localhost).
_LOCAL_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "localhost6", "localhost6.localdomain6", "ip6-localhost", "ip6-loopback"}
)


@dataclass(frozen=True)
class Allowlist:
    """Hosts (by name or literal address) and networks the operator allows anyway."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str | None) -> Allowlist:
        """``"127.0.0.1, 10.0.0.0/8, hooks.internal"``; raises ValueError on a bad network."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in (text or "").split(","):
            entry = raw.strip()
            if not entry:
                continue
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                except ValueError:
                    raise ValueError(f"{ALLOW_SETTING}: {entry!r} is not a network (like 10.0.0.0/8)") from None
                continue
            address = parse_ip(entry)
            if address is not None:
                networks.append(ipaddress.ip_network(address))
            else:
                hosts.add(normalize_host(entry))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return normalize_host(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        candidates = [address, *_embedded_ipv4(address)]
        return any(a in net for a in candidates for net in self.networks if a.version == net.version)


def normalize_host(host: str) -> str:
    """Lower case, no brackets, no trailing dot, no IPv6 zone: the form rules compare."""
    text = host.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    return text.split("%", 1)[0]


def parse_ip(host: str) -> IPAddress | None:
    """The address a host literally names, in any spelling a resolver accepts; None for a name."""
    text = normalize_host(host)
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _parse_ipv4(text)


def _parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """The WHATWG URL standard's IPv4 parser (also what inet_aton accepts): one to four
    parts, each decimal, octal (leading 0) or hex (0x); the last part fills the rest."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or any(part == "" for part in parts):
        return None
    numbers: list[int] = []
    for part in parts:
        number = _ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ipv4_number(part: str) -> int | None:
    radix = 10
    if part[:2] in ("0x", "0X"):
        radix, part = 16, part[2:]
    elif len(part) > 1 and part.startswith("0"):
        radix, part = 8, part[1:]
    if part == "":
        return 0  # "0x" reads as zero, as in browsers
    try:
        return int(part, radix) if part.isalnum() and part.isascii() else None
    except ValueError:
        return None


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address reaches: mapped, 6to4, NAT64, IPv4-compatible."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def address_problem(address: IPAddress) -> str | None:
    """Why a callback may not go to this address (the rule it breaks); None when it may."""
    for embedded in _embedded_ipv4(address):
        problem = address_problem(embedded)
        if problem:
            return problem
    if address in METADATA:
        return "cloud metadata"
    for network, rule in _RULES:
        if address.version == network.version and address in network:
            return rule
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "special-purpose (not globally routable)"
    return None


def is_local_name(host: str) -> bool:
    name = normalize_host(host)
    return name in _LOCAL_NAMES or name.endswith(".localhost")


def host_problem(host: str, allow: Allowlist) -> str | None:
    """Why this host may not be called, judged without DNS; None when DNS must decide."""
    if allow.allows_host(host):
        return None
    if is_local_name(host):
        return f"{host!r} names this machine (loopback)"
    address = parse_ip(host)
    if address is not None and not allow.allows_address(address):
        problem = address_problem(address)
        if problem:
            return f"{host!r} is {_article(problem)} address ({address})"
    return None


def resolved_problem(host: str, address: IPAddress, allow: Allowlist) -> str | None:
    """Why the address ``host`` resolved to may not be called; None when it may."""
    if allow.allows_host(host) or allow.allows_address(address):
        return None
    problem = address_problem(address)
    if problem:
        return f"{host!r} resolves to {address}, {_article(problem)} address"
    return None


def check_url(url: str, allow: Allowlist) -> str:
    """Raise CallbackRefused for what is wrong without DNS (scheme, local names, forbidden
    literal addresses); return the host to resolve."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise CallbackRefused(f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in SCHEMES:
        raise CallbackRefused(f"must be an http or https URL (the scheme is {parts.scheme!r})")
    if not host:
        raise CallbackRefused("must name a host")
    problem = host_problem(host, allow)
    if problem:
        raise CallbackRefused(refusal(problem))
    return host


def refusal(problem: str) -> str:
    return f"{problem}: callbacks only go to public addresses unless {ALLOW_SETTING} allows the host"


def _article(rule: str) -> str:
    return ("an " if rule[:1] in "aeiou" else "a ") + rule
