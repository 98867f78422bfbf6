"""How fluxrun processes stop: the protocol that workers (fluxrun/worker/shutdown.py) and
``serve``'s supervisor (fluxrun/supervisor.py) share, which neither may import from the other.

- The first SIGTERM or SIGINT: finish the task in hand, then exit.
- Another one at least ``DEBOUNCE_SECONDS`` later: hand the task back to the queue, exit now.
  Signals closer to the first are the same request heard twice (a terminal's Ctrl-C and
  systemd signal the whole process group, and ``serve`` passes the signal on as well).
- A worker that has handed its task back but is still there ``HARD_EXIT_SECONDS`` later
  exits regardless (``EXIT_STOPPED_NOW``).
"""

from __future__ import annotations

DEBOUNCE_SECONDS = 1.0
HARD_EXIT_SECONDS = 15.0
EXIT_STOPPED_NOW = 1
