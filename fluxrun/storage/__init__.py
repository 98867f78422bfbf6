"""Where output files go: one interface, one file per backend, and open_storage() to pick one."""

from __future__ import annotations

from fluxrun.config import Settings
from fluxrun.storage.base import OutputStorage
from fluxrun.storage.local import LocalStorage

__all__ = ["OutputStorage", "LocalStorage", "open_storage"]


def open_storage(settings: Settings) -> OutputStorage:
    """An S3-compatible bucket when FLUXRUN_S3_BUCKET is set, else local files under the data dir.

    Nothing is contacted here; ``check()`` does that.
    """
    if settings.s3_bucket:
        from fluxrun.storage.s3 import S3Storage  # boto3 is imported only by those who use it

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.outputs_dir)
