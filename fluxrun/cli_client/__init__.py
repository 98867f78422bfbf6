"""The client's shell commands (`fluxrun run | tools | task | tasks | cancel | kill`).

They use the SDK (fluxrun.client) alone, so they work with the base install; the server's
commands stay in fluxrun.cli, which registers these on its app.
"""

from __future__ import annotations

from fluxrun.cli_client.commands import register

__all__ = ["register"]
