"""A tool's inputs from the command line: ``--name value`` pairs checked against its schema.

The inputs of ``fluxrun run`` are not known until the tool is: they come from the tool's own
description (Tool/Detail's ITEMs: id, type, default, required, options, min, max, step), so
one command serves every tool, fluxrun's or the hosted service's. An input is checked here
before anything is sent, and a broken rule is one line naming the input and what it takes.
The server checks again (its rules may be finer, e.g. a pixel budget); its refusal is shown
the same way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fluxrun.client.models import ToolInfo, ToolInput

# Input types whose values are numbers on the tool page; an input with a min or a max is a
# number whatever its type says.
NUMERIC_TYPES = frozenset({"number", "float", "integer", "int", "range", "slider"})


class InputProblem(Exception):
    """A tool input on the command line that cannot be sent: ``str()`` is the one line to show."""


def split_pairs(args: Sequence[str]) -> list[tuple[str, str]]:
    """``--name value`` and ``--name=value`` tokens as (name, value) pairs, in order.

    A value may start with a single dash (``--seed -1``); a token of two dashes after a name
    is the next name, so ``--prompt --steps 3`` is a missing value, not a prompt.
    """
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(args):
        token = args[index]
        if not token.startswith("--") or token == "--":
            hint = f' (quote a value with spaces: --prompt "{pairs[-1][1]} {token}")' if pairs else ""
            raise InputProblem(f"unexpected argument {token!r}; tool inputs are given as --INPUT VALUE{hint}")
        name, equals, value = token[2:].partition("=")
        if not equals:
            if index + 1 >= len(args) or args[index + 1].startswith("--"):
                raise InputProblem(f"--{name} needs a value: --{name} VALUE or --{name}=VALUE")
            value = args[index + 1]
            index += 1
        pairs.append((name, value))
        index += 1
    return pairs


def spelling_key(name: str) -> str:
    """outputFormat, output-format, output_format and OUTPUT_FORMAT all read as one name."""
    return name.replace("-", "").replace("_", "").lower()


def find_input(tool: ToolInfo, name: str) -> ToolInput:
    """The input ``name`` stands for: its id as the tool spells it, or a kebab/snake spelling."""
    inputs = tool.inputs
    for spec in inputs:
        if spec.id == name:
            return spec
    matches = [spec for spec in inputs if spelling_key(spec.id) == spelling_key(name)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(f"--{spec.id}" for spec in inputs)
    if matches:
        raise InputProblem(f"--{name} is ambiguous for {tool.name}: say {' or '.join('--' + m.id for m in matches)}")
    raise InputProblem(f"{tool.name} has no input --{name}; its inputs: {listed}")


def tool_inputs(tool: ToolInfo, args: Sequence[str]) -> dict[str, Any]:
    """The inputs to send for ``args``, keyed by the tool's ids, each checked against its
    rules; inputs not given are left to the server's defaults. Raises InputProblem."""
    inputs: dict[str, Any] = {}
    for name, raw in split_pairs(args):
        spec = find_input(tool, name)
        inputs[spec.id] = input_value(spec, raw)  # the last of a repeated input wins, as flags do
    for spec in tool.inputs:
        if spec.required and _blank(inputs.get(spec.id)):
            raise InputProblem(f"--{spec.id} is required by {tool.name}: {spec.id} must be {allowed_values(spec)}")
    return inputs


def input_value(spec: ToolInput, raw: str) -> Any:
    """The value of one input as it will be sent (a number for a number, the option's own
    spelling for a choice), or InputProblem naming the input and what it takes."""
    if raw.strip() == "":
        return ""  # empty: the tool's default (a random seed for a seed), as on the wire
    if spec.options:
        values = [str(option.value) for option in spec.options]
        for value in values:
            if value.lower() == raw.strip().lower():
                return value
        raise _refused(spec, raw)
    if not is_numeric(spec):
        return raw
    try:
        number = float(raw)
    except ValueError:
        raise _refused(spec, raw) from None
    if not math.isfinite(number):
        raise _refused(spec, raw)
    if is_whole(spec) and not number.is_integer():
        raise _refused(spec, raw)
    if (spec.min is not None and number < spec.min) or (spec.max is not None and number > spec.max):
        raise _refused(spec, raw)
    if is_whole(spec) and spec.step and spec.step > 1 and (number - (spec.min or 0)) % spec.step:
        raise _refused(spec, raw)
    return int(number) if number.is_integer() and is_whole(spec) else number


def is_numeric(spec: ToolInput) -> bool:
    return spec.type.lower() in NUMERIC_TYPES or spec.min is not None or spec.max is not None


def is_whole(spec: ToolInput) -> bool:
    """Whole numbers only: the input moves in whole steps (steps: 1, width: 16)."""
    return spec.step is not None and spec.step >= 1 and float(spec.step).is_integer()


def allowed_values(spec: ToolInput) -> str:
    """What an input takes, in words: "one of jpeg, png", "an integer from 64 to 2048 in
    steps of 16", "a number from 1.5 to 10", "text"."""
    if spec.options:
        return "one of " + ", ".join(str(option.value) for option in spec.options)
    if not is_numeric(spec):
        return "text"
    words = "an integer" if is_whole(spec) else "a number"
    if spec.min is not None and spec.max is not None:
        words += f" from {_number(spec.min)} to {_number(spec.max)}"
    elif spec.min is not None:
        words += f" of at least {_number(spec.min)}"
    elif spec.max is not None:
        words += f" of at most {_number(spec.max)}"
    if is_whole(spec) and spec.step and spec.step > 1:
        words += f" in steps of {_number(spec.step)}"
    return words


def _refused(spec: ToolInput, raw: str) -> InputProblem:
    return InputProblem(f"--{spec.id} {raw}: {spec.id} must be {allowed_values(spec)}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())
