"""Progress of one task's denoising, in the shape of the WebSocket's task_output message."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def _duration(seconds: float) -> str:
    return f"{max(0, round(seconds))}s"


@dataclass
class ProgressMeter:
    started: float = field(default_factory=time.monotonic)

    def message(self, done: int, total: int) -> dict[str, str]:
        """SPEC.md section 5's progressGenerate object; every value a string."""
        elapsed = time.monotonic() - self.started
        speed = done / elapsed if elapsed > 0 else 0.0
        remaining = (total - done) / speed if speed > 0 else 0.0
        return {
            "type": "progressGenerate",
            "task": "Generate",
            "percentage": str(int(100 * done / total)) if total else "0",
            "stepCurrent": str(done),
            "stepTotal": str(total),
            "speed": f"{speed:.2f}",
            "speedType": "it/s",
            "elapsedTime": _duration(elapsed),
            "remainingTime": _duration(remaining),
        }
