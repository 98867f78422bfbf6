"""The SSRF rules: every spelling of a forbidden address is refused, the allow list works."""

from __future__ import annotations

import ipaddress

import pytest

from fluxrun.errors import CallbackRefused
from fluxrun.netguard import Allowlist, address_problem, check_url, host_problem, parse_ip, resolved_problem

NOBODY = Allowlist()


@pytest.mark.parametrize(
    ("host", "address", "rule"),
    [
        ("127.0.0.1", "127.0.0.1", "loopback"),
        ("2130706433", "127.0.0.1", "loopback"),  # decimal
        ("0177.0.0.1", "127.0.0.1", "loopback"),  # octal
        ("0x7f.1", "127.0.0.1", "loopback"),  # hex, short form
        ("0x7F000001", "127.0.0.1", "loopback"),
        ("127.1", "127.0.0.1", "loopback"),  # short form
        ("127.0.0.1.", "127.0.0.1", "loopback"),  # trailing dot
        ("127.255.255.254", "127.255.255.254", "loopback"),
        ("[::1]", "::1", "loopback"),
        ("[0:0:0:0:0:0:0:1]", "::1", "loopback"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6
        ("[::ffff:7f00:1]", "::ffff:127.0.0.1", "loopback"),
        ("[::127.0.0.1]", "::127.0.0.1", "loopback"),  # IPv4-compatible (deprecated)
        ("[64:ff9b::7f00:1]", "64:ff9b::7f00:1", "loopback"),  # NAT64
        ("[2002:7f00:1::]", "2002:7f00:1::", "loopback"),  # 6to4
        ("0.0.0.0", "0.0.0.0", "unspecified"),
        ("0", "0.0.0.0", "unspecified"),
        ("[::]", "::", "unspecified"),
        ("10.0.0.1", "10.0.0.1", "private"),
        ("172.16.5.4", "172.16.5.4", "private"),
        ("192.168.1.1", "192.168.1.1", "private"),
        ("0xc0.0xa8.1.1", "192.168.1.1", "private"),
        ("3232235777", "192.168.1.1", "private"),
        ("[::ffff:10.0.0.1]", "::ffff:10.0.0.1", "private"),
        ("[fc00::1]", "fc00::1", "private"),
        ("[fd12:3456::1]", "fd12:3456::1", "private"),
        ("169.254.1.1", "169.254.1.1", "link-local"),
        ("[fe80::1]", "fe80::1", "link-local"),
        ("[fe80::1%25eth0]", "fe80::1", "link-local"),  # with a zone
        ("100.64.0.1", "100.64.0.1", "carrier-grade NAT"),
        ("224.0.0.1", "224.0.0.1", "multicast"),
        ("[ff02::1]", "ff02::1", "multicast"),
        ("240.0.0.1", "240.0.0.1", "reserved"),
        ("255.255.255.255", "255.255.255.255", "reserved"),
        ("169.254.169.254", "169.254.169.254", "cloud metadata"),
        ("2852039166", "169.254.169.254", "cloud metadata"),
        ("0251.0376.0251.0376", "169.254.169.254", "cloud metadata"),
        ("[::ffff:169.254.169.254]", "::ffff:169.254.169.254", "cloud metadata"),
        ("[fd00:ec2::254]", "fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "100.100.100.200", "cloud metadata"),
        ("192.0.2.1", "192.0.2.1", "special-purpose"),  # documentation range
        ("198.18.0.1", "198.18.0.1", "special-purpose"),  # benchmarking
    ],
)
def test_every_spelling_of_a_forbidden_address_is_refused(host: str, address: str, rule: str) -> None:
    assert parse_ip(host) == ipaddress.ip_address(address)
    problem = host_problem(host, NOBODY)
    assert problem and rule in problem
    with pytest.raises(CallbackRefused, match="FLUXRUN_CALLBACK_ALLOW"):
        check_url(f"http://{host}:8080/hook", NOBODY)


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "localhost.", "api.localhost", "localhost.localdomain",
                                  "ip6-localhost"])
def test_names_of_this_machine_are_refused_without_dns(host: str) -> None:
    problem = host_problem(host, NOBODY)
    assert problem and "loopback" in problem


@pytest.mark.parametrize("host", ["8.8.8.8", "93.184.215.14", "[2606:4700:4700::1111]", "example.com",
                                  "hooks.example.org.", "1.2.3.4.5", "localhost.example.com"])
def test_public_addresses_and_names_pass_the_checks_that_need_no_dns(host: str) -> None:
    assert host_problem(host, NOBODY) is None
    assert check_url(f"https://{host}/hook", NOBODY)


def test_public_addresses_have_no_problem() -> None:
    for text in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"):
        assert address_problem(ipaddress.ip_address(text)) is None


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://example.com:70/_x",
                                 "javascript:alert(1)", "ws://example.com/", "//example.com/x", "http:///nohost",
                                 "http://example.com:99999/"])
def test_only_http_and_https_urls_with_a_host(url: str) -> None:
    with pytest.raises(CallbackRefused):
        check_url(url, NOBODY)


def test_the_allow_list_names_hosts_and_networks() -> None:
    allow = Allowlist.parse(" 127.0.0.1, hooks.internal. ,10.0.0.0/8, [::1], fd00::/8,, ")
    assert host_problem("127.0.0.1", allow) is None
    assert host_problem("[::ffff:127.0.0.1]", allow) is None  # the same address, mapped
    assert host_problem("127.0.0.2", allow)  # one address allowed, not its network
    assert host_problem("10.20.30.40", allow) is None and host_problem("0xa.1", allow) is None
    assert host_problem("[::1]", allow) is None and host_problem("[fd00:ec2::254]", allow) is None
    assert host_problem("192.168.0.1", allow)
    # A host allowed by name may resolve anywhere; others are judged by each address.
    loopback = ipaddress.ip_address("127.0.0.5")
    assert resolved_problem("HOOKS.internal", loopback, allow) is None
    problem = resolved_problem("other.internal", loopback, allow)
    assert problem and "resolves to 127.0.0.5" in problem and "loopback" in problem
    assert resolved_problem("other.internal", ipaddress.ip_address("10.1.1.1"), allow) is None
    assert host_problem("localhost", Allowlist.parse("localhost")) is None


def test_a_bad_network_in_the_allow_list_is_an_error() -> None:
    with pytest.raises(ValueError, match="FLUXRUN_CALLBACK_ALLOW: '10.0.0.0/33' is not a network"):
        Allowlist.parse("10.0.0.0/33")
