"""The hosted service's HMAC scheme, shared by the API and the client.

``x-signature = hex(HMAC-SHA256(key=API_KEY, message=API_SECRET + NONCE))``. The signature
covers neither the body nor the path, so the server must refuse a nonce seen before (the
store remembers them) and a nonce that reads as a unix time far from its clock.
"""

from __future__ import annotations

import hashlib
import hmac
import time

#: How far a nonce that reads as a unix time may be from the server's clock.
DEFAULT_NONCE_WINDOW_S = 300
MAX_NONCE_LENGTH = 128

_SECONDS_RANGE = (1_000_000_000, 10_000_000_000)  # 2001 .. 2286 in unix seconds
_MILLIS_RANGE = (1_000_000_000_000, 10_000_000_000_000)


def sign(api_key: str, api_secret: str, nonce: str) -> str:
    return hmac.new(api_key.encode(), (api_secret + nonce).encode(), hashlib.sha256).hexdigest()


def signature_headers(api_key: str, api_secret: str | None, nonce: str | None = None) -> dict[str, str]:
    """Headers for one request; a fresh nonce (unix milliseconds) unless one is given."""
    if api_secret is None:
        return {"x-api-key": api_key}
    nonce = nonce if nonce is not None else str(time.time_ns() // 1_000_000)
    return {"x-api-key": api_key, "x-nonce": nonce, "x-signature": sign(api_key, api_secret, nonce)}


def verify(api_key: str, api_secret: str, nonce: str, signature: str) -> bool:
    """Constant-time check of a signature.

    The seeds compute it with ``openssl dgst -sha256 -hmac``, which prints
    ``SHA2-256(stdin)= <hex>`` (older versions ``(stdin)= <hex>``), and send that whole line:
    the digest is its last word. Hex case does not matter.
    """
    words = signature.split()
    digest = words[-1].lower() if words else ""
    return hmac.compare_digest(sign(api_key, api_secret, nonce).encode(), digest.encode())


def nonce_time(nonce: str) -> float | None:
    """The unix time a nonce stands for, or None when it is just a random value."""
    if not nonce.isascii() or not nonce.isdigit() or len(nonce) > 20:  # isdigit() alone takes "²"
        return None
    value = int(nonce)
    if _SECONDS_RANGE[0] <= value < _SECONDS_RANGE[1]:
        return float(value)
    if _MILLIS_RANGE[0] <= value < _MILLIS_RANGE[1]:
        return value / 1000.0
    return None


def nonce_problem(nonce: str, now: float, window_s: float = DEFAULT_NONCE_WINDOW_S) -> str | None:
    """Why a nonce is unacceptable on its face (before the replay check), or None."""
    if not nonce or len(nonce) > MAX_NONCE_LENGTH or not nonce.isprintable():
        return f"x-nonce must be 1 to {MAX_NONCE_LENGTH} printable characters."
    at = nonce_time(nonce)
    if at is not None and abs(now - at) > window_s:
        return (
            f"x-nonce reads as a unix time {abs(now - at):.0f} s away from the server's clock "
            f"(allowed: {window_s:.0f} s). Send the current time or a random integer."
        )
    return None

