from __future__ import annotations

import subprocess
import time

from fluxrun import auth


def test_signature_matches_the_seed_recipe_with_openssl() -> None:
    # The seeds: echo -n "${SECRET}${NONCE}" | openssl dgst -sha256 -hmac "${KEY}"
    out = subprocess.run(
        ["bash", "-c", 'echo -n "sec1700000000" | openssl dgst -sha256 -hmac "key"'],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out.strip().split()[-1] == auth.sign("key", "sec", "1700000000")


def test_verify_accepts_only_the_right_signature() -> None:
    good = auth.sign("k", "s", "42")
    assert auth.verify("k", "s", "42", good)
    assert auth.verify("k", "s", "42", good.upper())
    assert not auth.verify("k", "s", "43", good)
    assert not auth.verify("k", "other", "42", good)
    assert not auth.verify("k", "s", "42", "")
    # What the seeds' openssl line really puts in the header.
    assert auth.verify("k", "s", "42", f"SHA2-256(stdin)= {good}")
    assert auth.verify("k", "s", "42", f"(stdin)= {good}")
    assert not auth.verify("k", "s", "42", f"{good} trailing")


def test_signature_headers() -> None:
    headers = auth.signature_headers("k", "s", nonce="7")
    assert headers == {"x-api-key": "k", "x-nonce": "7", "x-signature": auth.sign("k", "s", "7")}
    assert auth.signature_headers("k", None) == {"x-api-key": "k"}
    fresh = auth.signature_headers("k", "s")
    assert auth.nonce_problem(fresh["x-nonce"], time.time()) is None


def test_nonce_reading_as_time_must_be_recent() -> None:
    now = 1_800_000_000.0
    assert auth.nonce_problem(str(int(now)), now) is None
    assert auth.nonce_problem(str(int(now * 1000)), now) is None
    assert auth.nonce_problem(str(int(now) - 299), now) is None
    assert "server's clock" in auth.nonce_problem(str(int(now) - 301), now)
    assert "server's clock" in auth.nonce_problem(str(int((now + 400) * 1000)), now)
    # Random integers (not unix times) are fine: only the replay check applies to them.
    assert auth.nonce_problem("12345", now) is None
    assert auth.nonce_problem("", now) is not None
    assert auth.nonce_problem("x" * 200, now) is not None


def test_a_nonce_of_other_digits_or_letters_is_refused_by_its_rule_not_by_a_crash() -> None:
    now = 1_800_000_000.0
    # "²" and "٣" pass str.isdigit(); int() raises on the first and reads the second.
    for nonce in ["²", "¹²³", "٣", "١٨٠٠٠٠٠٠٠٠", "42é"]:
        assert auth.nonce_time(nonce) is None
        assert auth.nonce_problem(nonce, now) == (
            "x-nonce must be 1 to 128 printable ASCII characters (a unix time or a random integer)."
        )
    # Random integers in any form are fine (the replay check is what guards them).
    for nonce in ["0", "-5", "4 2", "1e9", "007"]:
        assert auth.nonce_problem(nonce, now) is None, nonce
    assert auth.nonce_problem("tab\there", now) is not None
