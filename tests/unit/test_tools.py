from __future__ import annotations

import pytest

from fluxrun.errors import NotFoundError, ValidationError
from fluxrun.tools.catalog import TOOLS, find_tool
from fluxrun.tools.request import PixelArtPass

PIXEL = find_tool("desertPixel", "Flat-Pixel-Art-FLUX")
FLUX2 = find_tool("black-forest-labs", "flux-2-flex-t2i")


def _error(tool, body) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        tool.validate(body)
    return caught.value


def test_inputs_are_the_seeds() -> None:
    assert [(i.name, i.label, i.help, i.type, i.default) for i in PIXEL.inputs][1:7] == [
        ("samples", "numberofoutputs", "numberofoutputs-help", "number", "1"),
        ("steps", "inferencesteps", "inferencesteps-help", "number", "12"),
        ("scale", "guidancescale", "guidancescale-help", "float", "3"),
        ("seed", "seed", "seed-help", "text", "71942193"),
        ("width", "width", "width-help", "number", "1024"),
        ("height", "height", "height-help", "number", "1024"),
    ]
    assert [i.name for i in FLUX2.inputs] == [
        "prompt", "width", "height", "guidance", "steps", "safetyTolerance", "seed", "outputFormat"
    ]
    assert [(o.value, o.label) for o in FLUX2.input("outputFormat").options] == [("jpeg", "JPEG"), ("png", "PNG")]
    # The seeds' two tools, and a second LoRA tool over the pixel-art tool's base with the same inputs.
    assert [t.slug for t in TOOLS] == ["desertPixel/Flat-Pixel-Art-FLUX", "black-forest-labs/flux-2-flex-t2i",
                                       "fluxrun/Realism-FLUX"]
    realism = TOOLS[2]
    assert (realism.backend, realism.lora) == (PIXEL.backend, "realism") and realism.lora != PIXEL.lora
    assert [i.name for i in realism.inputs] == [i.name for i in PIXEL.inputs][:7]  # the seed's seven


def test_seed_run_body_validates_with_strings_for_numbers() -> None:
    params = PIXEL.validate({"prompt": "a cat", "samples": 1, "steps": 12, "scale": "3", "seed": "71942193",
                             "width": 1024, "height": 1024, "callbackUrl": "You can provide..."})
    assert params == {"prompt": "a cat", "samples": 1, "steps": 12, "scale": 3.0, "seed": 71942193,
                      "width": 1024, "height": 1024,
                      "pixelPerfect": "off", "paletteSize": 16, "pixelOutput": "upscaled"}


def test_defaults_fill_missing_inputs() -> None:
    params = FLUX2.validate({"prompt": "x"})
    assert params["width"] == 1024 and params["guidance"] == 4.5 and params["steps"] == 50
    assert params["outputFormat"] == "png" and params["safetyTolerance"] == 2


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_empty_seed_is_random_and_recorded(raw) -> None:
    seeds = {PIXEL.validate({"prompt": "x", "seed": raw})["seed"] for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s < 2**32 for s in seeds)


@pytest.mark.parametrize(
    ("tool", "body", "field", "rule"),
    [
        (PIXEL, {}, "prompt", "required"),
        (FLUX2, {"prompt": ""}, "prompt", "required"),
        (PIXEL, {"prompt": "x", "width": 1000}, "width", "multiple of 16"),
        (PIXEL, {"prompt": "x", "height": "abc"}, "height", "integer"),
        (PIXEL, {"prompt": "x", "steps": 0}, "steps", "between 1 and 50"),
        (PIXEL, {"prompt": "x", "steps": "12.5"}, "steps", "integer"),
        (PIXEL, {"prompt": "x", "samples": True}, "samples", "integer"),
        (PIXEL, {"prompt": "x", "scale": "loud"}, "scale", "number"),
        (PIXEL, {"prompt": "x", "scale": "nan"}, "scale", "finite"),
        (PIXEL, {"prompt": "x", "seed": "-1"}, "seed", "between 0"),
        (PIXEL, {"prompt": 5}, "prompt", "string"),
        (FLUX2, {"prompt": "x", "guidance": 11}, "guidance", "between 1.5 and 10"),
        (FLUX2, {"prompt": "x", "outputFormat": "gif"}, "outputFormat", "one of jpeg, png"),
        (FLUX2, {"prompt": "x", "width": 2048, "height": 4096, "steps": 1}, "width", "at most 4194304 pixels"),
        (FLUX2, {"prompt": "x", "safetyTolerance": 7}, "safetyTolerance", "between 0 and 6"),
        (PIXEL, {"prompt": "x", "pixelPerfect": "yes"}, "pixelPerfect", "one of off, on"),
        (PIXEL, {"prompt": "x", "paletteSize": 1}, "paletteSize", "between 2 and 64 (got 1)"),
        (PIXEL, {"prompt": "x", "paletteSize": "65"}, "paletteSize", "between 2 and 64 (got 65)"),
        (PIXEL, {"prompt": "x", "paletteSize": "lots"}, "paletteSize", "integer"),
        (PIXEL, {"prompt": "x", "pixelOutput": "gif"}, "pixelOutput", "one of upscaled, sprite"),
    ],
)
def test_errors_name_the_field_and_the_rule(tool, body, field, rule) -> None:
    error = _error(tool, body)
    assert error.field == field and rule in error.rule
    assert error.message.startswith(f"{field}: ")
    assert error.to_wire() == {"result": False, "errors": [{"code": 0, "message": error.message}]}


def test_to_request_maps_roles() -> None:
    request = PIXEL.to_request(PIXEL.validate({"prompt": "x", "scale": 3.5, "samples": 2, "seed": 7}))
    assert (request.guidance, request.samples, request.seed, request.backend) == (3.5, 2, 7, "flux1")
    assert request.lora == "flat-pixel-art" and request.trigger_words == "dpixeBw style"
    assert request.image_seeds() == [7, 8]
    flux2 = FLUX2.to_request(FLUX2.validate({"prompt": "x", "outputFormat": "JPEG", "seed": 123}))
    assert flux2.output_format == "jpeg" and flux2.extra == {"safetyTolerance": 2} and flux2.seed == 123


def test_the_pixel_perfect_inputs_come_after_the_seeds_and_default_to_off() -> None:
    added = PIXEL.inputs[7:]
    assert [(i.name, i.type, i.default) for i in added] == [
        ("pixelPerfect", "select", "off"), ("paletteSize", "number", "16"), ("pixelOutput", "select", "upscaled"),
    ]
    assert [o.value for o in PIXEL.input("pixelPerfect").options] == ["off", "on"]
    assert [o.value for o in PIXEL.input("pixelOutput").options] == ["upscaled", "sprite"]
    assert (PIXEL.input("paletteSize").min, PIXEL.input("paletteSize").max) == (2, 64)
    # Labels and help a person reads, not the seed's translation keys.
    assert all(i.label[0].isupper() and " " in i.help and not i.help.endswith("-help") for i in added)


def test_the_pixel_perfect_pass_is_asked_for_only_when_on() -> None:
    off = PIXEL.to_request(PIXEL.validate({"prompt": "x", "paletteSize": 8, "pixelOutput": "sprite"}))
    assert off.pixel_pass is None and off.extra == {}
    on = PIXEL.to_request(PIXEL.validate({"prompt": "x", "pixelPerfect": "On", "paletteSize": "8",
                                          "pixelOutput": "sprite"}))
    assert on.pixel_pass == PixelArtPass(palette_size=8, output="sprite") and on.extra == {}
    defaults = PIXEL.to_request(PIXEL.validate({"prompt": "x", "pixelPerfect": "on"}))
    assert defaults.pixel_pass == PixelArtPass(palette_size=16, output="upscaled")
    assert FLUX2.to_request(FLUX2.validate({"prompt": "x"})).pixel_pass is None


def test_unknown_tool() -> None:
    with pytest.raises(NotFoundError):
        find_tool("nobody", "nothing")
    assert find_tool("desertpixel", "flat-pixel-art-flux") is PIXEL
