"""Where the client connects and with which key: arguments, then the environment, then the
credentials file a local ``fluxrun serve`` writes (``data/credentials.json``).

Nothing here runs at import time; ``resolve()`` reads the environment and the file when a
Client is made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fluxrun.client.errors import ConfigurationError

API_KEY_ENV = "FLUXRUN_API_KEY"
API_SECRET_ENV = "FLUXRUN_API_SECRET"
BASE_URL_ENV = "FLUXRUN_BASE_URL"
SOCKET_URL_ENV = "FLUXRUN_SOCKET_URL"
DATA_DIR_ENV = "FLUXRUN_DATA_DIR"  # the server's data directory: its credentials.json is looked at
DEFAULT_CREDENTIALS = Path("data") / "credentials.json"


@dataclass(frozen=True)
class Connection:
    api_key: str
    api_secret: str | None  # None: apikey-only mode (x-api-key alone)
    base_url: str  # normalised: http(s)://host[:port][/prefix]/v1
    socket_url: str  # ws(s)://.../v1
    credentials_path: Path | None  # the file that was read, if any


def resolve(
    api_key: str | None,
    api_secret: str | None,
    base_url: str | None,
    socket_url: str | None,
    credentials_path: str | Path | None,
    environ: Mapping[str, str] | None = None,
) -> Connection:
    """Arguments > FLUXRUN_* environment > the credentials file > ConfigurationError.

    The secret goes with its key: an explicit ``api_secret``, else the environment's when its
    key is this key (or FLUXRUN_API_KEY is unset), else the file's when its key is this key.
    No secret at all means apikey-only mode.
    """
    env = os.environ if environ is None else environ
    file_path = _credentials_file(credentials_path, env)
    stored = _read_credentials(file_path) if file_path else {}

    env_key = _clean(env.get(API_KEY_ENV))
    file_key = _clean(stored.get("api_key"))
    key = _clean(api_key) or env_key or file_key
    if not key:
        raise ConfigurationError(
            f"No API key: pass api_key=, set {API_KEY_ENV}, or point credentials_path= at a credentials.json "
            f"(looked at {_looked_at(credentials_path, file_path, env)})."
        )
    secret = _clean(api_secret)
    if secret is None and env_key in (None, key):
        secret = _clean(env.get(API_SECRET_ENV))
    if secret is None and file_key == key:
        secret = _clean(stored.get("api_secret"))

    raw_base = _clean(base_url) or _clean(env.get(BASE_URL_ENV)) or _clean(stored.get("base_url"))
    if not raw_base:
        raise ConfigurationError(
            f"No base URL: pass base_url= (e.g. http://127.0.0.1:8000 or https://api.wiro.ai/v1), set "
            f"{BASE_URL_ENV}, or use the credentials.json a fluxrun server wrote "
            f"(looked at {_looked_at(credentials_path, file_path, env)})."
        )
    normal_base = normalise_base_url(raw_base)
    raw_socket = _clean(socket_url) or _clean(env.get(SOCKET_URL_ENV))
    socket = normalise_socket_url(raw_socket) if raw_socket else socket_url_for(normal_base)
    return Connection(key, secret, normal_base, socket, file_path if stored else None)


def normalise_base_url(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/``, ``https://api.wiro.ai/v1/`` -> ``.../v1``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"base_url must be an absolute http:// or https:// URL (got {url!r})")
    return urlunsplit((parts.scheme, parts.netloc, _v1_path(parts.path), "", ""))


def normalise_socket_url(url: str) -> str:
    """A ws(s):// URL ending in /v1; http(s):// is taken as ws(s)://."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigurationError(f"socket_url must be an absolute ws:// or wss:// URL (got {url!r})")
    return urlunsplit((scheme, parts.netloc, _v1_path(parts.path), "", ""))


def socket_url_for(base_url: str) -> str:
    """The WebSocket beside a base URL: same host and path, ws for http, wss for https."""
    return normalise_socket_url(base_url)


def _v1_path(path: str) -> str:
    path = path.rstrip("/")
    return path if path.endswith("/v1") else path + "/v1"


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _credentials_file(given: str | Path | None, env: Mapping[str, str]) -> Path | None:
    """The file to read: the one given (it must exist), else $FLUXRUN_DATA_DIR's, else ./data's."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise ConfigurationError(f"credentials_path {str(path)!r} is not a file")
        return path
    data_dir = _clean(env.get(DATA_DIR_ENV))
    for candidate in ([Path(data_dir) / "credentials.json"] if data_dir else []) + [DEFAULT_CREDENTIALS]:
        if candidate.is_file():
            return candidate
    return None


def _read_credentials(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the credentials file {str(path)!r}: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"the credentials file {str(path)!r} must hold a JSON object")
    return loaded


def _looked_at(given: str | Path | None, found: Path | None, env: Mapping[str, str]) -> str:
    if found is not None:
        return f"the arguments, the environment and {str(found)!r}"
    places = [f"${DATA_DIR_ENV}/credentials.json"] if _clean(env.get(DATA_DIR_ENV)) else []
    places.append(f"./{DEFAULT_CREDENTIALS.as_posix()}")
    return "the arguments, the environment, " + " and ".join(places) + " (not found)"
