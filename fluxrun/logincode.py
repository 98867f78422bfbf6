"""The playground's one-time login link: ``{base_url}/#login=<code>``.

``fluxrun serve`` (and ``fluxrun api``, and ``fluxrun login-link``) print such a link on the
server's machine; the page trades the code, once, for the project's API key and secret
(POST /playground/login). The code is 32 random bytes; the store keeps only its SHA-256
(the code has full entropy, so a plain hash is enough: no salt, no slow hash), so a copy of
the database gives no usable code. It lasts ``TTL_SECONDS`` and works once.

The code rides in the URL's fragment, which browsers never send in requests (nor in
Referer headers), so it stays out of access logs and proxies; the page removes it from the
address bar once read.
"""

from __future__ import annotations

import hashlib
import secrets

TTL_SECONDS = 15 * 60
FRAGMENT_KEY = "login"


def new_code() -> str:
    return secrets.token_urlsafe(32)


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def login_url(base_url: str, code: str) -> str:
    return f"{base_url.rstrip('/')}/#{FRAGMENT_KEY}={code}"
