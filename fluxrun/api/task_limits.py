"""The server's limits on what one task may ask for, on top of its tool's own ranges.

A tool's page gives each input its range (samples 1 to 4, steps 1 to 50...) and the tool
checks it. The operator's settings may be tighter, to fit the GPUs at hand:
FLUXRUN_MAX_PROMPT_CHARS, FLUXRUN_MAX_SAMPLES, FLUXRUN_MAX_STEPS and FLUXRUN_MAX_TASK_PIXELS
(width x height x samples); 0 is no limit. Inputs are found by their role, so a tool without
a samples input makes one image and one without steps has no step limit. Each refusal names
the input, the rule and what was sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fluxrun.config import Settings
from fluxrun.errors import ValidationError
from fluxrun.tools.spec import InputSpec, Role, ToolSpec


def check_prompt(tool: ToolSpec, body: Mapping[str, Any], settings: Settings) -> None:
    """The prompt's length, on the raw body: before the tool's own (looser) check speaks."""
    limit = settings.max_prompt_chars
    prompt = _input(tool, "prompt")
    raw = body.get(prompt.name) if prompt else None
    if limit and prompt and isinstance(raw, str) and len(raw) > limit:
        raise ValidationError(prompt.name, f"must be at most {limit} characters (got {len(raw)})")


def check_task(tool: ToolSpec, params: Mapping[str, Any], settings: Settings) -> None:
    """Samples, steps and pixels of the validated parameters against the settings."""
    samples_input, steps_input = _input(tool, "samples"), _input(tool, "steps")
    samples = int(params[samples_input.name]) if samples_input else 1
    if samples_input and settings.max_samples and samples > settings.max_samples:
        raise ValidationError(samples_input.name, f"must be at most {settings.max_samples} images per task on "
                                                  f"this server (got {samples})")
    if steps_input and settings.max_steps and int(params[steps_input.name]) > settings.max_steps:
        raise ValidationError(steps_input.name, f"must be at most {settings.max_steps} steps on this server "
                                                f"(got {params[steps_input.name]})")
    width_input, height_input = _input(tool, "width"), _input(tool, "height")
    limit = settings.max_task_pixels
    if not (limit and width_input and height_input):
        return
    width, height = int(params[width_input.name]), int(params[height_input.name])
    pixels = width * height * samples
    if pixels > limit:
        # Named after the width, as the tools' own width x height rule is (a client's "field:
        # rule" parsing then finds a field); the rule names every input it counts.
        names = [width_input.name, height_input.name] + ([samples_input.name] if samples_input else [])
        sizes = [width, height] + ([samples] if samples_input else [])
        raise ValidationError(width_input.name, f"{' x '.join(names)} must be at most {limit} pixels per task "
                                                f"(got {'x'.join(map(str, sizes))} = {pixels})")


def _input(tool: ToolSpec, role: Role) -> InputSpec | None:
    return next((spec for spec in tool.inputs if spec.role == role), None)
