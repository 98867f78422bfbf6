"""Properties of input validation (ToolSpec.validate, what the Run route calls), for every tool.

For any body at all (well-formed, nearly so, or hostile: wrong types, huge numbers, numbers
as text, unicode, missing and extra fields), ``validate`` either
- accepts it, and then the request a worker builds from the stored parameters is a valid
  call of the pipelines (fluxrun/backends/flux1.py, flux2.py, partner.py): the types and
  ranges below, the same after the JSON round trip through the store; or
- refuses it with ValidationError naming one of the tool's inputs, its message starting
  with that name (what the client reads);
and never raises anything else.
"""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from fluxrun.errors import ValidationError
from fluxrun.tools.catalog import TOOLS
from fluxrun.tools.request import GenerationRequest
from fluxrun.tools.spec import MAX_SEED, InputSpec, ToolSpec

# What the pipelines are called with (fluxrun/backends): FluxPipeline and Flux2Pipeline take
# width and height in multiples of 16 (the VAE's 8 times the 2x2 patches), the partner API at
# least 64; num_inference_steps an int of at least 1; guidance_scale a finite float;
# torch.Generator.manual_seed(seed + i) an int below 2**64.
SIDE_MULTIPLE = 16
MIN_SIDE = 64
OUTPUT_FORMATS = {"png", "jpeg"}
PIXEL_OUTPUTS = {"upscaled", "sprite"}

PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Hostile values of any JSON type (and what the lenient parser and forms produce).
NUMBER_TEXT = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.from_regex(r"\s*-?[0-9]{1,6}(\.[0-9]{0,3})?([eE][+-]?[0-9]{1,3})?\s*", fullmatch=True),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "0x10", "1_000", "٣", "²", "12.0", "+5", "  7  "]),
)
ANY_VALUE = st.recursive(
    st.one_of(
        st.none(), st.booleans(),
        st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=30), NUMBER_TEXT,
    ),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)),
    max_leaves=5,
)


def plausible(spec: InputSpec) -> st.SearchStrategy[Any]:
    """Values near what the input takes, as numbers or as text, in and just out of range."""
    if spec.kind == "string":
        return st.text(min_size=0, max_size=60) | st.just("a cat") | st.text(min_size=9_990, max_size=10_010)
    if spec.kind == "choice":
        values = [o.value for o in spec.options]
        return st.sampled_from(values + [v.upper() for v in values] + [f" {v} " for v in values] + ["gif", "", 1])
    low = int(spec.min) if spec.min is not None else 0
    high = int(spec.max) if spec.max is not None else MAX_SEED
    near = st.integers(min_value=low - 20, max_value=high + 20)
    if spec.multiple_of:
        near = near | st.integers(min_value=low // spec.multiple_of - 1, max_value=high // spec.multiple_of + 1).map(
            lambda n: n * spec.multiple_of)
    if spec.kind == "float":
        near = near | st.floats(min_value=low - 5, max_value=high + 5)
    if spec.kind == "seed":
        near = near | st.integers(min_value=MAX_SEED - 3, max_value=MAX_SEED + 3) | st.just("")
    return near | near.map(str) | near.map(lambda n: f" {n} ")


def bodies(tool: ToolSpec) -> st.SearchStrategy[dict[str, Any]]:
    inputs = {spec.name: st.one_of(plausible(spec), ANY_VALUE) for spec in tool.inputs}
    extras = st.dictionaries(st.text(alphabet=string.ascii_letters, min_size=1, max_size=12), ANY_VALUE, max_size=3)
    return st.builds(lambda known, extra: {**extra, **known},
                     st.fixed_dictionaries({}, optional=inputs), extras)


def assert_valid_pipeline_call(tool: ToolSpec, request: GenerationRequest) -> None:
    def whole(value: Any, low: int, high: int) -> None:
        assert type(value) is int and low <= value <= high, (tool.slug, value)

    assert isinstance(request.prompt, str) and request.prompt.strip()
    prompt_spec = tool.input("prompt")
    assert prompt_spec.max_length is None or len(request.prompt) <= prompt_spec.max_length
    for side, name in ((request.width, "width"), (request.height, "height")):
        spec = tool.input(name)
        whole(side, MIN_SIDE, int(spec.max or side))
        assert side % SIDE_MULTIPLE == 0, (name, side)
    if tool.max_pixels is not None:
        assert request.width * request.height <= tool.max_pixels
    whole(request.steps, 1, int(_spec_by_role(tool, "steps").max or 10**6))
    guidance = _spec_by_role(tool, "guidance")
    assert type(request.guidance) is float and math.isfinite(request.guidance)
    assert (guidance.min or 0) <= request.guidance <= (guidance.max or math.inf)
    whole(request.seed, 0, MAX_SEED)
    whole(request.samples, 1, 4)
    assert request.output_format in OUTPUT_FORMATS
    for seed in request.image_seeds():
        assert 0 <= seed < 2**64  # torch.Generator.manual_seed
    if request.pixel_pass is not None:
        whole(request.pixel_pass.palette_size, 2, 64)
        assert request.pixel_pass.output in PIXEL_OUTPUTS
    for name, value in request.extra.items():
        spec = tool.input(name)
        if spec.kind == "int":
            whole(value, int(spec.min), int(spec.max))


def _spec_by_role(tool: ToolSpec, role: str) -> InputSpec:
    return next(spec for spec in tool.inputs if spec.role == role)


def check(tool: ToolSpec, body: dict[str, Any]) -> None:
    try:
        params = tool.validate(body)
    except ValidationError as refused:
        assert refused.field in {spec.name for spec in tool.inputs}, refused.field
        assert str(refused).startswith(f"{refused.field}: ") and refused.rule, str(refused)
        return
    assert set(params) == {spec.name for spec in tool.inputs}
    request = tool.to_request(params)
    assert_valid_pipeline_call(tool, request)
    # The store keeps the parameters as JSON; the worker builds its request from what it reads back.
    stored = json.loads(json.dumps(params, allow_nan=False))
    assert tool.to_request(stored) == request
    for name, raw in body.items():
        if name in params and type(raw) is int and not tool.input(name).kind == "float":
            assert params[name] == raw  # an accepted integer is used as sent


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool.slug)
@PROFILE
@given(data=st.data())
def test_any_body_is_a_valid_call_or_names_its_field(tool: ToolSpec, data: st.DataObject) -> None:
    check(tool, data.draw(bodies(tool)))


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool.slug)
@PROFILE
@given(data=st.data())
def test_any_value_of_one_input_is_a_valid_call_or_names_that_input(tool: ToolSpec, data: st.DataObject) -> None:
    """A valid body with one input replaced: if refused, the refusal names that very input."""
    spec = data.draw(st.sampled_from(tool.inputs))
    value = data.draw(st.one_of(plausible(spec), ANY_VALUE))
    body = {"prompt": "a cat", "width": 512, "height": 512, spec.name: value}
    try:
        tool.validate(body)
    except ValidationError as refused:
        assert refused.field == spec.name, (spec.name, value, str(refused))
    check(tool, body)


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool.slug)
@example(body={"prompt": "x", "scale": 10**400, "guidance": 10**400})
@given(body=st.fixed_dictionaries({"prompt": st.just("a cat")},
                                  optional={"scale": ANY_VALUE, "guidance": ANY_VALUE, "steps": ANY_VALUE}))
@PROFILE
def test_huge_numbers_are_refused_by_name(tool: ToolSpec, body: dict[str, Any]) -> None:
    check(tool, body)
