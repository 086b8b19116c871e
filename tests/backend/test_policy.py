"""The key policy: pins override the device, the model is fixed, lifetimes only shorten."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hark_backend.policy import Pin, Policy, load_policy
from pydantic import ValidationError

DOC = Path(__file__).resolve().parents[2] / "docs" / "backend.md"


def test_defaults_are_short_and_fixed() -> None:
    """No policy: gpt-realtime, 60 s keys, the device's allowed fields kept."""
    policy = Policy()
    assert policy.key_ttl_s == 60
    session = policy.session_for("d", None, {"instructions": "hi", "model": "other"})
    assert session == {"instructions": "hi", "type": "realtime", "model": "gpt-realtime"}


def test_device_fields_outside_the_allow_list_are_dropped() -> None:
    """``tracing``, ``prompt``, ``type`` and unknown fields never reach OpenAI from a device."""
    session = Policy().session_for(
        "d", None, {"tracing": "auto", "prompt": {"id": "p"}, "type": "transcription", "x": 1}
    )
    assert session == {"type": "realtime", "model": "gpt-realtime"}


def test_pins_layer_global_group_device() -> None:
    """Global pins, then the group's, then the device's; voice lands in audio.output."""
    policy = Policy(
        pin=Pin(instructions="global", tools=[]),
        groups={"kids": Pin(instructions="group", voice="marin")},
        devices={"nursery": Pin(instructions="device")},
    )
    asked = {"instructions": "mine", "tools": [{"type": "mcp"}], "audio": {"output": "junk"}}
    session = policy.session_for("nursery", "kids", asked)
    assert session["instructions"] == "device"
    assert session["tools"] == []
    assert session["audio"] == {"output": {"voice": "marin"}}
    assert policy.session_for("hall", "kids", None)["instructions"] == "group"
    assert policy.session_for("hall", None, None)["instructions"] == "global"


def test_ignore_mode_uses_pins_only() -> None:
    """device_session = "ignore" drops everything the device asked for."""
    policy = Policy(device_session="ignore", pin=Pin(voice="cedar"))
    session = policy.session_for("d", None, {"instructions": "mine", "audio": {"x": 1}})
    assert session == {
        "audio": {"output": {"voice": "cedar"}},
        "type": "realtime",
        "model": "gpt-realtime",
    }


def test_lifetime_only_shortens() -> None:
    """A device may ask for a shorter key, never a longer one, never below OpenAI's 10 s."""
    policy = Policy(key_ttl_s=60)
    assert policy.ttl_s(None) == 60
    assert policy.ttl_s(3600) == 60
    assert policy.ttl_s(20) == 20
    assert policy.ttl_s(1) == 10


def test_bad_policies_are_refused(tmp_path: Path) -> None:
    """Unknown fields and lifetimes outside OpenAI's 10..7200 s are errors."""
    for text in ("key_ttl_s = 5\n", "key_ttl_s = 9000\n", "bogus = 1\n", "[pin]\nmodel = 'x'\n"):
        path = tmp_path / "policy.toml"
        path.write_text(text)
        with pytest.raises(ValidationError):
            load_policy(path)


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    """--model and --key-ttl-s win over the file; None means "not given"."""
    path = tmp_path / "policy.toml"
    path.write_text('model = "gpt-realtime-mini"\nkey_ttl_s = 30\n')
    policy = load_policy(path, model=None, key_ttl_s=45)
    assert (policy.model, policy.key_ttl_s) == ("gpt-realtime-mini", 45)


def test_the_documented_example_loads(tmp_path: Path) -> None:
    """The policy example in docs/backend.md is valid and means what the text says."""
    match = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    assert match
    path = tmp_path / "policy.toml"
    path.write_text(match.group(1))
    policy = load_policy(path)
    session = policy.session_for("nursery", "kids", {"instructions": "mine"})
    assert session["instructions"] == "Speak softly."
    assert session["tools"] == []
    assert session["audio"]["output"]["voice"] == "marin"
    hall = policy.session_for("hall", None, None)
    assert hall["audio"]["output"]["speed"] == 1.1
    assert hall["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 15000
    assert hall["audio"]["input"]["transcription"]["keywords"] == ["Nabu"]


def test_sdk_transform_is_an_identity_for_our_body() -> None:
    """The body we pass as extra_body is exactly what create(expires_after, session) would send."""
    from openai._utils import transform
    from openai.types.realtime.client_secret_create_params import ClientSecretCreateParams

    policy = Policy(pin=Pin(instructions="Be brief.", voice="marin", tools=[]))
    session = policy.session_for(
        "d",
        None,
        {
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}},
            "output_modalities": ["audio"],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "truncation": "auto",
            "include": ["item.input_audio_transcription.logprobs"],
        },
    )
    body = {"expires_after": {"anchor": "created_at", "seconds": 60}, "session": session}
    assert transform(body, ClientSecretCreateParams) == body


EVERY_PIN = Pin(
    speed=1.2,
    noise_reduction="far_field",
    turn_detection={"type": "semantic_vad", "eagerness": "low"},
    max_output_tokens=300,
    truncation={"retention_ratio": 0.8, "post_instructions_tokens": 8000},
    reasoning_effort="low",
    transcription_model="gpt-transcribe",
    transcription_language="de",
    transcription_prompt="Kitchen words.",
    transcription_keywords=["Spätzle"],
    voice="cedar",
)


def test_every_session_option_can_be_pinned() -> None:
    """Each option lands where the GA session has it, and the result is a valid
    RealtimeSessionCreateRequest with nothing the SDK does not know."""
    from openai.types.realtime import RealtimeSessionCreateRequest

    policy = Policy(model="gpt-realtime-2", pin=EVERY_PIN)
    session = policy.session_for("d", None, None)
    assert session == {
        "type": "realtime",
        "model": "gpt-realtime-2",
        "max_output_tokens": 300,
        "truncation": {
            "type": "retention_ratio",
            "retention_ratio": 0.8,
            "token_limits": {"post_instructions": 8000},
        },
        "reasoning": {"effort": "low"},
        "audio": {
            "input": {
                "noise_reduction": {"type": "far_field"},
                "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
                "transcription": {
                    "model": "gpt-transcribe",
                    "language": "de",
                    "prompt": "Kitchen words.",
                    "keywords": ["Spätzle"],
                },
            },
            "output": {"voice": "cedar", "speed": 1.2},
        },
    }
    parsed = RealtimeSessionCreateRequest.model_validate(session)
    assert not parsed.model_extra


def test_pins_merge_into_the_devices_audio_field_by_field() -> None:
    """A pinned speed keeps the device's voice and format; a pinned turn detection or
    noise reduction replaces the device's whole; "off" pins null."""
    policy = Policy(
        pin=Pin(speed=0.9, noise_reduction="off"),
        devices={"hall": Pin(turn_detection={"type": "server_vad", "threshold": 0.8})},
    )
    asked = {
        "audio": {
            "input": {
                "turn_detection": {"type": "semantic_vad", "eagerness": "high"},
                "noise_reduction": {"type": "near_field"},
                "format": {"type": "audio/pcm", "rate": 24000},
            },
            "output": {"voice": "marin", "speed": 1.5},
        },
        "max_output_tokens": 50,
    }
    session = policy.session_for("hall", None, asked)
    assert session["audio"]["output"] == {"voice": "marin", "speed": 0.9}
    assert session["audio"]["input"] == {
        "turn_detection": {"type": "server_vad", "threshold": 0.8},
        "noise_reduction": None,
        "format": {"type": "audio/pcm", "rate": 24000},
    }
    assert session["max_output_tokens"] == 50  # not pinned: the device's
    assert Policy(pin=Pin(turn_detection="off")).session_for("d", None, None)["audio"] == {
        "input": {"turn_detection": None}
    }


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[pin]\nmax_output_tokens = 0\n", "max_output_tokens"),
        ("[pin]\nmax_output_tokens = 5000\n", "max_output_tokens"),
        ('[pin]\nmax_output_tokens = "lots"\n', "max_output_tokens"),
        ("[pin]\nspeed = 2.0\n", "speed"),
        ('[pin]\nnoise_reduction = "far"\n', "noise_reduction"),
        ('[pin]\ntruncation = "never"\n', "truncation"),
        ("[pin]\ntruncation = {retention_ratio = 2.0}\n", "truncation"),
        ("[pin.turn_detection]\nthreshold = 2.0\n", "turn_detection"),
        ("[pin.turn_detection]\nidle_timeout_ms = 100\n", "turn_detection"),
        ('[pin.turn_detection]\ntype = "semantic_vad"\nthreshold = 0.5\n', "turn_detection"),
        ('[pin.turn_detection]\neagerness = "low"\n', "turn_detection"),
        ('[pin]\nreasoning_effort = "low"\n', "reasoning_effort"),
        ('model = "gpt-realtime-2"\n[pin]\nreasoning_effort = "max"\n', "reasoning_effort"),
        ('[pin]\ntranscription_language = "english"\n', "transcription_language"),
        ('[pin]\ntranscription_keywords = ["x"]\n', "transcription_keywords"),
        ('[groups.kids]\nspeed = "fast"\n', "speed"),
    ],
)
def test_bad_pins_are_refused_naming_the_field(tmp_path: Path, text: str, where: str) -> None:
    """A pin OpenAI would refuse is refused at start, naming the field."""
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ValidationError) as info:
        load_policy(path)
    assert where in str(info.value)


def test_reasoning_pins_follow_the_policys_model(tmp_path: Path) -> None:
    """reasoning_effort is fine with a gpt-realtime-2 model, also one set on the command line."""
    path = tmp_path / "policy.toml"
    path.write_text('[devices.hall]\nreasoning_effort = "high"\n')
    with pytest.raises(ValidationError, match=r"devices\.hall\.reasoning_effort"):
        load_policy(path)
    policy = load_policy(path, model="gpt-realtime-2.1-mini")
    assert policy.session_for("hall", None, None)["reasoning"] == {"effort": "high"}
