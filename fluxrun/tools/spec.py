"""A tool is declared, not coded: its inputs as the seed pages list them, plus the rules.

``validate`` turns a raw request body (numbers may arrive as strings) into the task's
parameters or raises ``ValidationError`` naming the field and the rule; ``to_request``
turns those parameters into what a backend is asked to make.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Mapping

from fluxrun.errors import ValidationError
from fluxrun.tools.request import GenerationRequest, PixelArtPass

# How a value is read: the seeds' `type` says how the form shows it, not how to parse it
# (the pixel-art seed is a "text" input holding an integer).
Kind = Literal["string", "int", "float", "seed", "choice"]
# The GenerationRequest field an input feeds; inputs without one land in `extra`. The
# pixel_* roles feed the request's `pixel_pass` instead: any tool can offer the pass by
# giving inputs these roles (pixel_perfect is a choice whose value "on" asks for it).
Role = Literal[
    "prompt", "width", "height", "steps", "guidance", "seed", "samples", "output_format",
    "pixel_perfect", "palette_size", "pixel_output",
]
_PIXEL_PASS_FIELDS = {"palette_size": "palette_size", "pixel_output": "output"}  # role -> PixelArtPass field

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Option:
    value: str
    label: str


@dataclass(frozen=True)
class InputSpec:
    name: str
    label: str
    help: str
    type: str  # as in the seed: textarea | number | float | text | select
    default: str  # as in the seed, text
    kind: Kind
    role: Role | None = None
    required: bool = False
    options: tuple[Option, ...] = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    multiple_of: int | None = None
    max_length: int | None = None

    def parse(self, raw: Any) -> Any:
        """The typed value of one supplied input, or ValidationError."""
        if self.kind == "string":
            return self._parse_string(raw)
        if self.kind == "choice":
            return self._parse_choice(raw)
        if self.kind == "float":
            return self._check_range(_to_float(self.name, raw))
        value = _to_int(self.name, raw)
        if self.kind == "seed" and not 0 <= value <= MAX_SEED:
            raise ValidationError(self.name, f"must be an integer between 0 and {MAX_SEED}, or empty for a random seed")
        value = self._check_range(value)
        if self.multiple_of and value % self.multiple_of:
            raise ValidationError(self.name, f"must be a multiple of {self.multiple_of} (got {value})")
        return value

    def _parse_string(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise ValidationError(self.name, "must be a string")
        if self.max_length is not None and len(raw) > self.max_length:
            raise ValidationError(self.name, f"must be at most {self.max_length} characters (got {len(raw)})")
        return raw

    def _parse_choice(self, raw: Any) -> str:
        text = str(raw).strip().lower() if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else None
        allowed = [o.value for o in self.options]
        if text not in allowed:
            raise ValidationError(self.name, f"must be one of {', '.join(allowed)}")
        return text

    def _check_range(self, value: Any) -> Any:
        low, high = self.min, self.max
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValidationError(self.name, f"must be between {_num(low)} and {_num(high)} (got {_num(value)})")
        return value


@dataclass(frozen=True)
class ToolSpec:
    id: str
    slugowner: str
    slugproject: str
    title: str
    description: str
    categories: tuple[str, ...]
    tags: tuple[str, ...]
    image: str
    cps: Decimal  # cost per second of generation, as the hosted service bills
    backend: str  # which backend makes the images (fluxrun.backends.registry)
    inputs: tuple[InputSpec, ...]
    lora: str | None = None  # adapter name over the backend's base model
    lora_source: str | None = None  # where the adapter comes from unless FLUXRUN_LORA_<NAME> says
    trigger_words: str | None = None
    max_pixels: int | None = None  # width x height

    @property
    def slug(self) -> str:
        return f"{self.slugowner}/{self.slugproject}"

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def validate(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The task's parameters: every input present, typed, within its rules.

        Inputs missing or empty take the seed's default; a required one without a value is
        an error; an empty seed is replaced by a random one, recorded so the image can be
        made again. Unknown fields are ignored (clients send extras such as callbackUrl).
        """
        params: dict[str, Any] = {}
        for spec in self.inputs:
            raw = body.get(spec.name)
            if _is_empty(raw):
                if spec.required:
                    raise ValidationError(spec.name, "is required and must not be empty")
                if spec.kind == "seed":
                    params[spec.name] = secrets.randbelow(MAX_SEED + 1)
                    continue
                raw = spec.default
            params[spec.name] = spec.parse(raw)
        self._check_pixels(params)
        return params

    def _check_pixels(self, params: Mapping[str, Any]) -> None:
        if self.max_pixels is None:
            return
        width, height = params.get("width"), params.get("height")
        if isinstance(width, int) and isinstance(height, int) and width * height > self.max_pixels:
            raise ValidationError(
                "width",
                f"width x height must be at most {self.max_pixels} pixels (got {width}x{height} = {width * height})",
            )

    def to_request(self, params: Mapping[str, Any]) -> GenerationRequest:
        fields: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        pixel_on = False
        pixel: dict[str, Any] = {}
        for spec in self.inputs:
            if spec.name not in params:
                continue
            if spec.role is None:
                extra[spec.name] = params[spec.name]
            elif spec.role == "pixel_perfect":
                pixel_on = params[spec.name] == "on"
            elif spec.role in _PIXEL_PASS_FIELDS:
                pixel[_PIXEL_PASS_FIELDS[spec.role]] = params[spec.name]
            else:
                fields[spec.role] = params[spec.name]
        return GenerationRequest(
            tool=self.slug,
            backend=self.backend,
            lora=self.lora,
            trigger_words=self.trigger_words,
            extra=extra,
            pixel_pass=PixelArtPass(**pixel) if pixel_on else None,
            **fields,
        )


def _is_empty(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and raw.strip() == "")


def _to_int(name: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValidationError(name, "must be an integer")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip()
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                as_float = math.nan
            if math.isfinite(as_float) and as_float.is_integer():
                return int(as_float)
    raise ValidationError(name, f"must be an integer (got {_show(raw)})")


def _to_float(name: str, raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValidationError(name, "must be a number")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        raise ValidationError(name, f"must be a number (got {_show(raw)})") from None
    except OverflowError:  # an integer beyond any float (a JSON number of hundreds of digits)
        raise ValidationError(name, f"must be a finite number (got {_show(raw)})") from None
    if not math.isfinite(value):
        raise ValidationError(name, "must be a finite number")
    return value


def _num(value: float | None) -> str:
    if value is None:
        return "any"
    if isinstance(value, int):  # shown as it is (shortened): float() of a huge one overflows
        return _show(value)
    return str(int(value)) if value.is_integer() else str(value)


def _show(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."
