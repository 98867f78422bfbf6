from __future__ import annotations

from fluxrun.cli import main

main()
