from __future__ import annotations

import pytest

from fluxrun.api.body import parse_lenient
from fluxrun.errors import ValidationError


def test_plain_json() -> None:
    assert parse_lenient('{"a": 1, "b": [1, "x"]}') == {"a": 1, "b": [1, "x"]}


def test_the_first_seeds_detail_line_as_the_shell_sends_it() -> None:
    # -d '{ "tasktoken": 'eDcC...', }' : the inner quotes end the shell string, so the
    # token arrives bare, followed by a trailing comma.
    body = '{ "tasktoken": eDcCm5yyUfIvMFspTwww49OUfgXkQt, }'
    assert parse_lenient(body) == {"tasktoken": "eDcCm5yyUfIvMFspTwww49OUfgXkQt"}


def test_single_quotes_trailing_commas_bare_numbers() -> None:
    assert parse_lenient("{'taskid': '12', 'n': 3, 'ok': true, 'list': [1, 2,],}") == {
        "taskid": "12", "n": 3, "ok": True, "list": [1, 2]
    }
    assert parse_lenient('{ taskid: 12 , url: http://x.test/a }') == {"taskid": 12, "url": "http://x.test/a"}
    assert parse_lenient("{'it\\'s': \"a \\\"q\\\"\"}") == {"it's": 'a "q"'}


@pytest.mark.parametrize("text", ['{"a": 1', '{"a" 1}', "[1, 2", '{"a": "x}', "{} extra"])
def test_broken_bodies_name_the_body(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_lenient(text)
    assert caught.value.field == "body"
