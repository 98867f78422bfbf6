"""Where fluxrun.client finds its key, secret and URLs: arguments, then FLUXRUN_*, then the
credentials file a local server writes; and how it spells the URLs it was given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fluxrun.client import Client
from fluxrun.client.connection import normalise_base_url, resolve, socket_url_for
from fluxrun.client.errors import ConfigurationError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FLUXRUN_API_KEY", "FLUXRUN_API_SECRET", "FLUXRUN_BASE_URL", "FLUXRUN_SOCKET_URL", "FLUXRUN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data/credentials.json unless a test writes one


def write_credentials(path: Path, key: str = "filekey", secret: str | None = "filesecret",
                      base_url: str = "http://127.0.0.1:8000") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"api_key": key, "api_secret": secret, "webhook_secret": "w", "base_url": base_url}))
    return path


@pytest.mark.parametrize(("given", "expected"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("https://api.wiro.ai/v1/", "https://api.wiro.ai/v1"),
    (" https://gpu.example.com/fluxrun ", "https://gpu.example.com/fluxrun/v1"),
])
def test_base_urls_end_in_v1_however_given(given: str, expected: str) -> None:
    assert normalise_base_url(given) == expected


@pytest.mark.parametrize("bad", ["api.wiro.ai", "ftp://host/v1", "http://", "ws://host:8000"])
def test_a_base_url_that_is_not_http_is_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url must be an absolute http"):
        normalise_base_url(bad)


def test_the_socket_sits_beside_the_base_url() -> None:
    assert socket_url_for("http://127.0.0.1:8000/v1") == "ws://127.0.0.1:8000/v1"
    assert socket_url_for("https://gpu.example.com/fluxrun/v1") == "wss://gpu.example.com/fluxrun/v1"


def test_a_socket_on_another_host_is_an_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client("k", base_url="https://api.wiro.ai/v1", socket_url="wss://socket.wiro.ai")
    assert client.socket_url == "wss://socket.wiro.ai/v1"
    monkeypatch.setenv("FLUXRUN_SOCKET_URL", "wss://socket.wiro.ai/v1")
    assert Client("k", base_url="https://api.wiro.ai/v1").socket_url == "wss://socket.wiro.ai/v1"


def test_arguments_win_over_the_environment_which_wins_over_the_file(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    path = write_credentials(tmp_path / "data" / "credentials.json")
    from_file = resolve(None, None, None, None, None)
    assert (from_file.api_key, from_file.api_secret, from_file.base_url) == (
        "filekey", "filesecret", "http://127.0.0.1:8000/v1")
    assert from_file.credentials_path == Path("data/credentials.json")

    monkeypatch.setenv("FLUXRUN_API_KEY", "envkey")
    monkeypatch.setenv("FLUXRUN_API_SECRET", "envsecret")
    monkeypatch.setenv("FLUXRUN_BASE_URL", "http://env.example:9000")
    from_env = resolve(None, None, None, None, path)
    assert (from_env.api_key, from_env.api_secret, from_env.base_url) == (
        "envkey", "envsecret", "http://env.example:9000/v1")

    from_args = resolve("argkey", "argsecret", "https://arg.example", None, path)
    assert (from_args.api_key, from_args.api_secret, from_args.base_url) == (
        "argkey", "argsecret", "https://arg.example/v1")


def test_a_secret_is_only_taken_with_its_own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_credentials(tmp_path / "creds.json")
    # Another key than the file's: the file's secret is not this key's, so apikey-only.
    other = resolve("otherkey", None, None, None, path)
    assert other.api_secret is None and other.base_url == "http://127.0.0.1:8000/v1"
    # The file's own key given again: its secret comes along.
    assert resolve("filekey", None, None, None, path).api_secret == "filesecret"
    # A secret in the environment without a key there goes with the key given.
    monkeypatch.setenv("FLUXRUN_API_SECRET", "envsecret")
    assert resolve("otherkey", None, None, None, path).api_secret == "envsecret"
    # ...but not when the environment's secret belongs to another key.
    monkeypatch.setenv("FLUXRUN_API_KEY", "envkey")
    assert resolve("otherkey", None, None, None, path).api_secret is None


def test_a_file_without_a_secret_is_apikey_only(tmp_path: Path) -> None:
    path = write_credentials(tmp_path / "creds.json", secret=None)
    assert Client(credentials_path=path).signed is False


def test_the_data_directory_of_the_environment_is_looked_at(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_credentials(tmp_path / "elsewhere" / "credentials.json", key="datakey")
    monkeypatch.setenv("FLUXRUN_DATA_DIR", str(tmp_path / "elsewhere"))
    assert Client().api_key == "datakey"


def test_no_key_anywhere_says_where_it_looked() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Client(base_url="http://127.0.0.1:8000")
    message = str(caught.value)
    assert "FLUXRUN_API_KEY" in message and "api_key=" in message and "./data/credentials.json" in message


def test_no_base_url_anywhere_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="No base URL"):
        Client("key", "secret")


def test_a_missing_credentials_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="missing.json"):
        Client(credentials_path=tmp_path / "missing.json")


def test_an_unreadable_credentials_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="cannot read the credentials file"):
        Client(credentials_path=path)


def test_the_secret_never_shows_in_the_clients_repr(tmp_path: Path) -> None:
    client = Client(credentials_path=write_credentials(tmp_path / "c.json"))
    assert "filesecret" not in repr(client) and "signed" in repr(client)
