"""`fluxrun run`'s inputs: --name value pairs checked against a tool's description.

The descriptions are the real tools' Tool/Detail answers (fluxrun.wire.tool_wire of the
catalog), read by the SDK's model, so the client's checks are tested against what the
server says about itself, and against what the server's own validation decides.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from fluxrun.cli_client.inputs import InputProblem, allowed_values, input_value, split_pairs, tool_inputs
from fluxrun.client.models import ToolInfo
from fluxrun.errors import ValidationError
from fluxrun.tools.catalog import TOOLS, find_tool
from fluxrun.tools.spec import ToolSpec
from fluxrun.wire import tool_wire


def described(spec: ToolSpec) -> ToolInfo:
    return ToolInfo.model_validate(tool_wire(spec))


PIXEL = described(find_tool("desertPixel", "Flat-Pixel-Art-FLUX"))
FLUX2 = described(find_tool("black-forest-labs", "flux-2-flex-t2i"))


def problem(tool: ToolInfo, *args: str) -> str:
    with pytest.raises(InputProblem) as caught:
        tool_inputs(tool, list(args))
    return str(caught.value)


def test_pairs_in_both_spellings_and_values_that_start_with_a_dash() -> None:
    assert split_pairs(["--prompt", "a fox", "--steps=30", "--seed", "-1", "--prompt=b=c"]) == [
        ("prompt", "a fox"), ("steps", "30"), ("seed", "-1"), ("prompt", "b=c")]
    assert split_pairs([]) == []


@pytest.mark.parametrize(("args", "words"), [
    (["--prompt"], "--prompt needs a value"),
    (["--prompt", "--steps", "3"], "--prompt needs a value"),
    (["--prompt", "a", "fox"], "unexpected argument 'fox'"),
    (["fox"], "unexpected argument 'fox'"),
])
def test_malformed_pairs_are_one_line(args: list[str], words: str) -> None:
    with pytest.raises(InputProblem) as caught:
        split_pairs(args)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_values_are_typed_and_names_taken_in_any_spelling() -> None:
    sent = tool_inputs(FLUX2, ["--prompt", "a fox", "--output-format", "JPEG", "--safety_tolerance", "3",
                               "--guidance", "2.5", "--width=512", "--steps", "30.0"])
    assert sent == {"prompt": "a fox", "outputFormat": "jpeg", "safetyTolerance": 3, "guidance": 2.5,
                    "width": 512, "steps": 30}
    # Inputs not given are left out: the server's defaults apply. An empty value is sent empty
    # (the seed's "random seed").
    assert tool_inputs(PIXEL, ["--prompt", "x", "--seed", ""]) == {"prompt": "x", "seed": ""}
    # The last of a repeated input wins, as with any flag.
    assert tool_inputs(PIXEL, ["--prompt", "x", "--steps", "3", "--steps", "4"])["steps"] == 4


def test_unknown_input_lists_the_tools_inputs() -> None:
    message = problem(FLUX2, "--prompt", "x", "--samples", "2")
    assert message == ("black-forest-labs/flux-2-flex-t2i has no input --samples; its inputs: --prompt, --width, "
                       "--height, --guidance, --steps, --safetyTolerance, --seed, --outputFormat")


@pytest.mark.parametrize(("tool", "args", "message"), [
    (PIXEL, ["--width", "1000"], "--width 1000: width must be an integer from 64 to 2048 in steps of 16"),
    (PIXEL, ["--samples", "99"], "--samples 99: samples must be an integer from 1 to 4"),
    (PIXEL, ["--steps", "2.5"], "--steps 2.5: steps must be an integer from 1 to 50"),
    (PIXEL, ["--scale", "lots"], "--scale lots: scale must be a number from 0 to 20"),
    (PIXEL, ["--scale", "nan"], "--scale nan: scale must be a number from 0 to 20"),
    (PIXEL, ["--pixelPerfect", "maybe"], "--pixelPerfect maybe: pixelPerfect must be one of off, on"),
    (FLUX2, ["--outputFormat", "gif"], "--outputFormat gif: outputFormat must be one of jpeg, png"),
    (FLUX2, ["--guidance", "1"], "--guidance 1: guidance must be a number from 1.5 to 10"),
])
def test_a_broken_rule_names_the_input_and_what_it_takes(tool: ToolInfo, args: list[str], message: str) -> None:
    assert problem(tool, "--prompt", "x", *args) == message


def test_required_inputs() -> None:
    assert problem(FLUX2, "--steps", "3") == (
        "--prompt is required by black-forest-labs/flux-2-flex-t2i: prompt must be text")
    assert problem(FLUX2, "--prompt", " ").startswith("--prompt is required")


def test_allowed_values_in_words() -> None:
    words = {spec.id: allowed_values(spec) for spec in FLUX2.inputs}
    assert words == {
        "prompt": "text", "width": "an integer from 64 to 4096 in steps of 16",
        "height": "an integer from 64 to 4096 in steps of 16", "guidance": "a number from 1.5 to 10",
        "steps": "an integer from 1 to 50", "safetyTolerance": "an integer from 0 to 6", "seed": "a number",
        "outputFormat": "one of jpeg, png",
    }


CANDIDATES = ["0", "1", "-1", "2", "1.5", "3.25", "4", "5", "16", "50", "51", "63", "64", "99", "1000", "1024",
              "1040", "2048", "2064", "4096", "4112", "1e3", "abc", "inf", "on", "off", "sprite", "png", "JPEG", "gif"]


@pytest.mark.parametrize("spec", TOOLS, ids=lambda spec: spec.slug)
def test_the_client_agrees_with_the_servers_own_validation(spec: ToolSpec) -> None:
    """For every input and value: what the client lets through, the server takes; what the
    server refuses, the client refuses first. Seeds are the exception: the description says
    nothing of their 32-bit range, so the server alone checks that."""
    tool = described(spec)
    for item, raw in itertools.product(tool.inputs, CANDIDATES):
        if item.id == "seed":
            continue
        try:
            value: Any = input_value(item, raw)
        except InputProblem:
            client_takes = False
        else:
            client_takes = True
        try:
            spec.input(item.id).parse(value if client_takes else raw)
        except ValidationError:
            server_takes = False
        else:
            server_takes = True
        assert client_takes == server_takes, (item.id, raw, client_takes, server_takes)
