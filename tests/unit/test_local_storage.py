"""Local output files: written whole or not at all, and what a killed writer left is swept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fluxrun.storage.local import PARTIAL, PARTIAL_MAX_AGE_SECONDS, LocalStorage

KEY = "0123456789abcdef0123456789abcdef01234567"


def test_a_file_lands_whole_and_nothing_is_left_in_partial(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.put(KEY, "0.png", b"png bytes", "image/png") == 9
    assert (tmp_path / KEY / "0.png").read_bytes() == b"png bytes"
    assert list((tmp_path / PARTIAL).iterdir()) == []
    assert list((tmp_path / KEY).iterdir()) == [tmp_path / KEY / "0.png"]  # no temp file beside it
    assert storage.path(PARTIAL, "0.png") is None  # never an address the files route serves


def test_sweep_removes_what_killed_writers_left_and_spares_writes_in_flight(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.sweep() == 0  # nothing written yet: no folder, nothing to do
    storage.put(KEY, "0.png", b"kept", "image/png")
    partial = tmp_path / PARTIAL
    left = [partial / f"{KEY}-1.png.abc{n}" for n in range(2)]  # a worker SIGKILLed mid-write, twice
    in_flight = partial / f"{KEY}-2.png.def"  # another worker's write, now
    for path in (*left, in_flight):
        path.write_bytes(b"half a file")
    long_ago = time.time() - PARTIAL_MAX_AGE_SECONDS - 60
    for path in left:
        os.utime(path, (long_ago, long_ago))
    assert storage.sweep() == 2
    assert sorted(partial.iterdir()) == [in_flight]
    assert (tmp_path / KEY / "0.png").read_bytes() == b"kept"  # finished files are never touched
    assert storage.sweep(now=time.time() + PARTIAL_MAX_AGE_SECONDS + 1) == 1  # in flight that long: dead too
