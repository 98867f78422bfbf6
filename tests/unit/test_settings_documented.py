"""README's settings table lists every setting, so an operator can find each one."""

from __future__ import annotations

import re
from pathlib import Path

from fluxrun.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_has_a_row_in_the_readme() -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `FLUXRUN_")]
    documented = {name for row in rows for name in re.findall(r"`(FLUXRUN_[A-Z0-9_]+)`", row.split(" | ")[0])}
    settings = sorted(f"FLUXRUN_{name.upper()}" for name in Settings.model_fields)
    missing = [name for name in settings if name not in documented]
    assert not missing, f"settings without a row in README.md's settings tables: {missing}"
