"""Strict input (issue 13): handshake targets, query values, JSON text messages, float audio, and the bound on
everything an error message echoes back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sendreturn_mood import protocol
from sendreturn_mood.audio.pcm import MAX_FLOAT_AMPLITUDE, BadAudio, decode
from sendreturn_mood.protocol import MessageError, Refusal


def bad_request(path: str) -> Refusal:
    with pytest.raises(Refusal) as e:
        protocol.parse_connect(path, presets=["default"])
    assert e.value.status == 400 and e.value.code == "bad_request"
    return e.value


@pytest.mark.parametrize(
    "path",
    ["/v1/rooms/lobby%0A", "/v1/rooms/lobby%0a", "/v1/rooms/lobby\n", "/v1/rooms/lob\tby", "/v1/rooms/lob\rby",
     "/v1/rooms/lobby%00", "/v1/rooms/lobby%20", "/v1/rooms/lobby%", "/v1/rooms/lobby%zz", "/v1/rooms/l%C3%A9",
     "/v1/rooms/lobby ", "/v1/rooms/lob by", "/v1/rooms/\u00e9", "/v1/rooms/a%2Fb", "/v1/rooms/" + "a" * 65,
     "/v1/rooms/lobby?role=source\t"],
)
def test_room_names_and_targets_are_refused_not_cleaned(path):
    message = bad_request(path).message
    assert len(message) <= protocol.MAX_ERROR_MESSAGE


def test_escapes_of_allowed_characters_are_the_same_room():
    assert protocol.parse_connect("/v1/rooms/lobb%79").room == "lobby"


@pytest.mark.parametrize(
    "query",
    ["sample_rate=48000%0A", "sample_rate=%2048000", "sample_rate=4_8000", "sample_rate=%2B48000", "sample_rate=",
     "sample_rate=%D9%A4%D9%A8%D9%A0%D9%A0%D9%A0",  # Arabic-Indic digits: int() would read 48000
     "channels=1%0A", "role=source%0A", "role=%20source", "encoding=pcm_s16le%09", "preset=default%0A",
     "sample_rate=4800000000000000000000000", "&".join(f"k{i}=1" for i in range(40)), "role=%FF"],
)
def test_query_values_exactly_as_the_protocol_says(query):
    bad_request(f"/v1/rooms/a?{query}")


def test_tokens_with_control_characters_are_refused_without_echo():
    """A token's shape is judged by the authenticator, when the server requires tokens (without them any value is
    ignored alike): control characters are a 401 that never echoes the value."""
    from sendreturn_mood.config import load_config
    from sendreturn_mood.server.auth import Authenticator

    assert protocol.parse_connect("/v1/rooms/a?token=abc%0Adef").token == "abc\ndef"
    auth = Authenticator.from_config(load_config(None, {"server.auth_tokens": ["s3cret"]}))
    with pytest.raises(Refusal) as e:
        auth.verify("abc\ndef")
    assert e.value.status == 401 and "abc" not in e.value.message


@pytest.mark.parametrize(
    "text",
    ['{"type": "keepalive", "x": NaN}', '{"type": "keepalive", "x": Infinity}', '{"type": "keepalive", "x": -Infinity}',
     '{"type": "keepalive", "x": 1e999}', '{"type": "keepalive", "x": ' + "9" * 4301 + "}",
     '{"type": "keepalive", "x": ' + "1" * 33 + "}", '{"type": ' + "1" * 5000 + "}",
     '{"type": "keepalive", "pad": "' + "x" * protocol.MAX_TEXT_MESSAGE + '"}', "[" * 5000, '{"type": "\ud800"}'],
)
def test_json_is_strict_and_bounded(text):
    with pytest.raises(MessageError) as e:
        protocol.parse_client_message(text)
    assert e.value.code == "bad_message" and len(e.value.message) <= protocol.MAX_ERROR_MESSAGE


def test_numbers_within_the_limits_are_fine():
    assert protocol.parse_client_message('{"type": "keepalive", "n": 12345678901234567890, "f": -1.5e300}') == protocol.Keepalive()


@pytest.mark.parametrize(
    "kind", [["\u00e9" * 100000], {"a" * 100000: 1}, "x" * 100000, 10 ** 200, 1.5, None, True, [[[]]]]
)
def test_echoed_values_are_bounded_whatever_their_type(kind):
    with pytest.raises(MessageError) as e:
        protocol.parse_client_message(json.dumps({"type": kind}))
    reply = protocol.encode(protocol.error(e.value.code, e.value.message))
    assert len(reply) < 400


def test_shown_and_bounded_message():
    assert protocol.shown("abc") == "'abc'"
    assert len(protocol.shown("x" * 1000)) == protocol.MAX_ECHO
    assert protocol.shown([1] * 10**6) == "<list of 1000000>"
    assert len(protocol.error("bad_message", "m" * 10000)["message"]) == protocol.MAX_ERROR_MESSAGE
    assert len(protocol.refusal_body("bad_request", "m" * 10000)) < protocol.MAX_ERROR_MESSAGE + 100


@pytest.mark.parametrize("value", [1e30, -1e30, 1e20, MAX_FLOAT_AMPLITUDE * 1.01, 32767.0])
def test_float_audio_beyond_the_limit_is_bad_audio(value):
    x = np.zeros(4800, dtype="<f4")
    x[100] = value
    with pytest.raises(BadAudio, match="beyond the limit"):
        decode(x.tobytes(), "pcm_f32le", 1)


def test_int16_scaled_floats_get_a_hint_and_hot_float_audio_is_accepted():
    with pytest.raises(BadAudio, match="int16-scaled"):
        decode(np.full(10, 20000.0, dtype="<f4").tobytes(), "pcm_f32le", 2)
    hot = np.full(10, MAX_FLOAT_AMPLITUDE, dtype="<f4")
    assert decode(hot.tobytes(), "pcm_f32le", 1).max() == MAX_FLOAT_AMPLITUDE
    assert decode(b"", "pcm_f32le", 1).size == 0
