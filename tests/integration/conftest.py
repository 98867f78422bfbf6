"""Fixtures of the integration tier."""

from __future__ import annotations

import pytest

from fluxrun.backends.base import BackendOptions
from fluxrun.backends.registry import BackendCache


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> BackendCache:
    """The tiny FLUX.1 backend, built and loaded once for the session."""
    cache = BackendCache(BackendOptions(models="tiny", models_dir=tmp_path_factory.mktemp("models")))
    cache.get("flux1")
    return cache
