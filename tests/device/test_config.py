"""hark.config: the TOML schema, its error messages, the token file and redaction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hark import config as cfg
from hark.config import Config, ConfigError, load, parse, read_token, redacted
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = '[backend]\nurl = "https://keys.example.com/v1/realtime/client_secrets"\n'


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + text)
    return info.value.problems


def test_minimal_file_gets_defaults() -> None:
    """Two lines are a whole config; everything else has a documented default."""
    config = parse(MINIMAL)
    assert config.realtime.url == "wss://api.openai.com/v1/realtime"
    assert config.realtime.model == "gpt-realtime"
    assert config.backend.token_file == Path("/etc/hark/device-token")
    assert config.trigger.mode == "button"
    assert config.session.rotate_after_s <= 3600


def test_missing_backend_names_url() -> None:
    """An empty file says which field is required, by its dotted path."""
    with pytest.raises(ConfigError) as info:
        parse("")
    assert info.value.problems == ["backend.url: required"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[trigger]\nmode = "vox"\n', "trigger.mode: must be one of 'button', 'vad', 'both'"),
        ("[trigger]\nmodee = 1\n", "trigger.modee: unknown key; did you mean 'mode'?"),
        ("[vad]\naggressiveness = 7\n", "vad.aggressiveness: must be ≤ 3 (got 7)"),
        ('[gpio]\nbutton_pin = "x"\n', "gpio.button_pin: must be an integer"),
        ("[audio]\nvolume = 2.0\n", "audio.volume: must be ≤ 1.5"),
        ("[session]\nrotate_after_s = 4000\n", "session.rotate_after_s: must be ≤ 3600"),
        ("[history]\nenabled = 3\n", "history.enabled: must be true or false"),
        ("[sesion]\n", "sesion: unknown key; did you mean 'session'?"),
        ('[agent]\ntools = ["dance"]\n', "agent.tools.0: must be one of 'time'"),
        ('[agent]\ntimezone = "Mars/Base"\n', "agent.timezone: unknown time zone"),
        ('[agent]\nobject = "not a ref"\n', "agent.object: must look like"),
        ("[[agent.outputs]]\nname = 'l'\npin = 99\n", "agent.outputs.0.pin: must be ≤ 53"),
        ('[log]\nlevel = "loud"\n', "log.level: must be one of"),
    ],
)
def test_each_mistake_names_its_field(text: str, expected: str) -> None:
    """Unknown keys, wrong types, ranges and enums each give one line naming the field."""
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_all_problems_reported_at_once() -> None:
    """Several mistakes give several lines, so an owner fixes them in one pass."""
    problems = problems_of('[trigger]\nmode = "vox"\n[vad]\naggressiveness = -1\n')
    assert [p.split(":")[0] for p in problems] == ["trigger.mode", "vad.aggressiveness"]


def test_toml_syntax_error_has_line_number() -> None:
    """A syntax error says where it is."""
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + "[trigger\n")
    assert "line 3" in info.value.problems[0]
    assert "TOML syntax" in info.value.problems[0]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://keys.example.com/v1", True),
        ("http://127.0.0.1:8080/v1", True),
        ("http://localhost:8080/v1", True),
        ("http://[::1]:8080/v1", True),
        ("http://keys.example.com/v1", False),
        ("ftp://keys.example.com/v1", False),
        ("keys.example.com", False),
    ],
)
def test_backend_url_https_except_loopback(url: str, ok: bool) -> None:
    """The token travels to the backend, so plain http is only for loopback."""
    text = f'[backend]\nurl = "{url}"\n'
    if ok:
        assert parse(text).backend.url == url
    else:
        with pytest.raises(ConfigError, match=r"backend\.url"):
            parse(text)


def test_realtime_url_wss_except_loopback() -> None:
    """The Realtime URL must be wss:// except on loopback."""
    assert parse(MINIMAL + '[realtime]\nurl = "ws://127.0.0.1:9/v1/realtime"\n')
    assert problems_of('[realtime]\nurl = "ws://example.com/v1/realtime"\n')[0].startswith(
        "realtime.url:"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://keys.example.com/v1/client secrets", "must not contain a space"),
        ("https://keys example.com/v1", "must not contain a space"),
        ("https://keys.example.com/v1\r\nX-Injected: 1", "must not contain a control character"),
        ("https://keys.example.com/v1\n", "must not contain a control character"),
        ("https://keys.example.com\t/v1", "must not contain a control character"),
        ("https://kéys.example.com/v1", "must not contain a non-ASCII character"),
        ("https://keys.example.com:99999/v1", "port must be 1-65535"),
        ("https://keys.example.com:0/v1", "port must be 1-65535"),
        ("https://keys.example.com:/v1", "port must be 1-65535"),
        ("https://keys.example.com:https/v1", "port must be 1-65535"),
        ("https://-keys.example.com/v1", "has no valid host"),
        ("https://keys..example.com/v1", "has no valid host"),
        ("https://300.1.1.1/v1", "has no valid host"),
        ("https:///v1", "has no valid host"),
        ("https://[::1/v1", "is not a valid URL"),
        ("https://keys.example.com/v1#frag", "must not have a #fragment"),
        ("http://keys.example.com/v1", "must use https://"),
    ],
)
def test_backend_url_is_checked_whole(url: str, problem: str) -> None:
    """Whitespace, CR/LF, a bad port or host are refused by check-config, not by the link."""
    text = f"[backend]\nurl = {json.dumps(url)}\n"
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(f"backend.url: {problem}"), info.value.problems


@pytest.mark.parametrize(
    "url",
    [
        "https://keys.example.com:8443/v1/realtime/client_secrets?x=1",
        "https://KEYS.example.com./v1",
        "https://10.0.0.2/v1",
        "https://[2001:db8::1]:443/v1",
        "http://[::1]:8080/v1",
        "https://internal_host.lan/v1",
    ],
)
def test_good_urls_still_pass(url: str) -> None:
    """Ports, IP literals (v4 and [v6]), upper case and a trailing dot are all fine."""
    assert parse(f"[backend]\nurl = {json.dumps(url)}\n").backend.url == url


def test_realtime_url_is_checked_whole_and_masks_credentials() -> None:
    """The Realtime URL gets the same checks; a refused URL's password is not echoed."""
    problems = problems_of('[realtime]\nurl = "wss://api.openai.com/v1/real time"\n')
    assert problems[0].startswith("realtime.url: must not contain a space"), problems
    problems = problems_of('[realtime]\nurl = "wss://me:hunter2@api.openai.com:0/v1"\n')
    assert problems[0].startswith("realtime.url: port must be 1-65535"), problems
    assert "hunter2" not in problems[0]
    assert "***@api.openai.com" in problems[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[vad]\necho_gate = "yes"\n', "vad.echo_gate: must be true or false (got 'yes')"),
        ("[gpio]\nbutton_pull_up = 1\n", "gpio.button_pull_up: must be true or false (got 1)"),
        ("[audio]\nvolume = true\n", "audio.volume: must be a number (got True)"),
        ('[audio]\nvolume = "0.5"\n', "audio.volume: must be a number (got '0.5')"),
        ("[audio]\nbuffer_ms = 20.5\n", "audio.buffer_ms: must be an integer (got 20.5)"),
        ("[audio]\nbuffer_ms = 20.0\n", "audio.buffer_ms: must be an integer (got 20.0)"),
        ("[vad]\naggressiveness = true\n", "vad.aggressiveness: must be an integer"),
        ('[session]\nmax_turn_s = "30"\n', "session.max_turn_s: must be a number"),
        ("[audio]\ninput_device = true\n", "audio.input_device: must be a device name"),
        ("[gpio]\nrgb_pins = [5, 6, true]\n", "gpio.rgb_pins.2: must be an integer"),
        ("[[agent.outputs]]\nname = 'l'\npin = 5\ninitial = 'on'\n", "agent.outputs.0.initial"),
        ('[agent]\ntools = ["time", "time"]\n', "agent.tools: each tool once ('time' listed"),
    ],
)
def test_no_silent_coercion(text: str, expected: str) -> None:
    """A string or number is not a bool, a bool is not a number, a tool is listed once."""
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


def test_whole_numbers_are_numbers() -> None:
    """TOML's integers are fine where a number of seconds or a gain is expected."""
    config = parse(MINIMAL + "[audio]\nvolume = 1\n[session]\nmax_turn_s = 20\n")
    assert config.audio.volume == 1.0
    assert isinstance(config.audio.volume, float)
    assert config.session.max_turn_s == 20.0
    assert parse(MINIMAL + '[agent]\ntools = ["volume", "time"]\n').agent.tools == (
        "volume",
        "time",
    )


def test_agent_object_with_a_trailing_newline_is_refused() -> None:
    """'$' matches before a final newline; the object reference is matched whole."""
    problems = problems_of('[agent]\nobject = "kitchen.agents:agent\\n"\n')
    assert problems[0].startswith("agent.object: must look like"), problems


def test_agent_object_excludes_declaration() -> None:
    """Naming a Python agent and declaring one at the same time is refused."""
    assert parse(MINIMAL + '[agent]\nobject = "kitchen.agents:agent"\n').agent.object
    problems = problems_of('[agent]\nobject = "kitchen.agents:agent"\nname = "x"\n')
    assert problems == ["agent.object: give either agent.object or agent.name, not both"], problems


def test_outputs_and_pin_conflicts() -> None:
    """GPIO outputs parse; two things on one pin are refused, naming both."""
    config = parse(MINIMAL + '[[agent.outputs]]\nname = "kitchen light"\npin = 22\n')
    assert config.agent.outputs[0].pin == 22
    assert config.agent.outputs[0].active_high is True
    problems = problems_of("[gpio]\nled_pin = 17\n")
    assert problems == ["gpio.led_pin: pin 17 is already used by gpio.button_pin"]
    problems = problems_of(
        "[[agent.outputs]]\nname='a'\npin=5\n[[agent.outputs]]\nname='A'\npin=6\n"
    )
    assert problems == ["agent.outputs: output names must be unique"]


def test_button_mode_needs_button_pin() -> None:
    """Python-built configs (the demo, tests) with a button trigger need a button pin."""
    base = parse(MINIMAL)
    data = base.model_dump()
    data["gpio"]["button_pin"] = None
    with pytest.raises(ValueError, match=r"gpio\.button_pin: required when trigger\.mode"):
        Config.model_validate(data)
    data["trigger"]["mode"] = "vad"
    assert Config.model_validate(data).gpio.button_pin is None


def test_config_is_frozen() -> None:
    """The config is immutable: a reload builds a new one."""
    config = parse(MINIMAL)
    with pytest.raises(ValueError):
        config.log.level = "debug"


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    """Relative paths in the file are relative to the file, not to the daemon's cwd."""
    path = tmp_path / "hark.toml"
    path.write_text(
        '[backend]\nurl = "https://k.example.com/v1"\ntoken_file = "token"\n'
        '[audio]\ncue_done = "cues/done.wav"\n'
    )
    config = load(path)
    assert config.backend.token_file == tmp_path / "token"
    assert config.audio.cue_done == tmp_path / "cues" / "done.wav"


def test_load_missing_file(tmp_path: Path) -> None:
    """A missing file is a config error naming the file."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)


def test_read_token_ok(tmp_path: Path) -> None:
    """A 0600 token file yields the token, stripped."""
    path = tmp_path / "token"
    path.write_text("tok_abc123\n")
    path.chmod(0o600)
    assert read_token(path) == "tok_abc123"
    path.chmod(0o400)
    assert read_token(path) == "tok_abc123"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700])
def test_read_token_refuses_open_modes(tmp_path: Path, mode: int) -> None:
    """A token file others could read is refused with the chmod that fixes it."""
    path = tmp_path / "token"
    path.write_text("tok_secret_value")
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        read_token(path)
    assert f"chmod 600 {path}" in info.value.problems[0]
    assert info.value.problems[0].startswith("backend.token_file:")
    assert "tok_secret_value" not in str(info.value)


def test_read_token_missing_and_empty(tmp_path: Path) -> None:
    """Missing and empty token files are refused, naming the field."""
    with pytest.raises(ConfigError, match=r"backend\.token_file: .* does not exist"):
        read_token(tmp_path / "absent")
    path = tmp_path / "token"
    path.write_text("  \n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        read_token(path)
    path.write_text("two words\n")
    with pytest.raises(ConfigError, match="one token") as info:
        read_token(path)
    assert "two words" not in str(info.value)


def test_redacted_masks_url_credentials() -> None:
    """check-config output never shows credentials embedded in URLs."""
    config = parse('[backend]\nurl = "https://user:hunter2@keys.example.com/v1"\n')
    data = redacted(config)
    assert "hunter2" not in repr(data)
    assert data["backend"]["url"] == "https://***@keys.example.com/v1"
    assert data["trigger"]["mode"] == "button"


def _models(model: type[BaseModel], prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    out = [(prefix, model)]
    for name, info in model.model_fields.items():
        for candidate in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                out += _models(candidate, f"{prefix}{name}.")
    return out


def test_every_field_documented() -> None:
    """Every field has a description, and docs/config.md mentions every dotted name."""
    doc = (ROOT / "docs" / "config.md").read_text()
    for prefix, model in _models(Config):
        assert model.model_config.get("extra") == "forbid"
        assert model.model_config.get("frozen") is True
        for name, info in model.model_fields.items():
            assert info.description, f"{prefix}{name} has no description"
            if not issubclass(
                next(
                    (
                        c
                        for c in (info.annotation, *getattr(info.annotation, "__args__", ()))
                        if isinstance(c, type)
                    ),
                    object,
                ),
                BaseModel,
            ):
                assert f"`{name}`" in doc, f"docs/config.md does not document {prefix}{name}"


def test_example_config_is_valid() -> None:
    """examples/hark.toml (the file install-device puts in /etc/hark) stays valid."""
    config = load(ROOT / "examples" / "hark.toml")
    assert config.backend.url.startswith("https://")


def test_constants_match_defaults() -> None:
    """The module's default paths are what the unit file and install script use."""
    assert Path("/etc/hark/hark.toml") == cfg.DEFAULT_PATH
    assert Config.model_fields["history"].default_factory is not None
    assert os.fspath(cfg.DEFAULT_TOKEN_FILE) == "/etc/hark/device-token"


def test_example_commented_defaults_are_valid() -> None:
    """Uncommenting every `# key = value` line of the example keeps it valid (docs stay true)."""
    import re

    lines = []
    for line in (ROOT / "examples" / "hark.toml").read_text().splitlines():
        match = re.match(r"^# ((\[\[agent\.outputs\]\])|([a-z_]+ = .*))$", line)
        if match and not line.startswith("# object ="):
            line = match.group(1)
        lines.append(line)
    config = parse("\n".join(lines))
    assert config.agent.outputs[0].name == "kitchen light"
    assert config.gpio.led_pin == 25
    assert config.realtime.language == "en"


def test_docs_defaults_match_the_models() -> None:
    """Every default in docs/config.md's reference tables is the model's real default."""
    import json
    import re

    doc = (ROOT / "docs" / "config.md").read_text()
    defaults = Config.model_validate({"backend": {"url": "https://k.example.com"}})
    data = defaults.model_dump(mode="json")
    checked = 0
    for section, body in re.findall(r"### `\[(\w+)\]`\n(.*?)(?=\n### |\Z)", doc, re.S):
        for key, default in re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", body, re.M):
            assert key in data[section], f"{section}.{key} documented but not a field"
            value = data[section][key]
            documented = None if default == "none" else json.loads(default)
            assert documented == value, f"{section}.{key}: doc {default} != {value!r}"
            checked += 1
    assert checked > 40


# --------------------------------------------------------------------------- session options

SERVER_TURNS = '[trigger]\nmode = "vad"\nend_of_turn = "server"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[realtime]\nmax_output_tokens = 0",
            'realtime.max_output_tokens: must be an integer 1-4096 or "inf" (got 0)',
        ),
        (
            "[realtime]\nmax_output_tokens = 4097",
            'realtime.max_output_tokens: must be an integer 1-4096 or "inf" (got 4097)',
        ),
        (
            '[realtime]\nmax_output_tokens = "infinite"',
            "realtime.max_output_tokens: must be an integer 1-4096",
        ),
        (
            "[realtime]\nmax_output_tokens = 10.0",
            "realtime.max_output_tokens: must be an integer 1-4096",
        ),
        (
            "[realtime]\nmax_output_tokens = true",
            "realtime.max_output_tokens: must be an integer 1-4096",
        ),
        (
            '[realtime]\ntruncation = "off"',
            'realtime.truncation: must be "auto", "disabled" or a table',
        ),
        (
            "[realtime]\ntruncation = {retention_ratio = 1.5}",
            "realtime.truncation.retention_ratio: must be ≤ 1.0 (got 1.5)",
        ),
        ("[realtime]\ntruncation = {}", "realtime.truncation.retention_ratio: required"),
        (
            "[realtime]\ntruncation = {retention_ratio = 0.5, post_instructions_tokens = 0}",
            "realtime.truncation.post_instructions_tokens: must be ≥ 1 (got 0)",
        ),
        (
            "[realtime]\ntruncation = {retention_ratio = 0.5, tokens = 9}",
            "realtime.truncation.tokens: unknown key (allowed: retention_ratio, post_instructions",
        ),
        (
            '[realtime]\nnoise_reduction = "far"',
            "realtime.noise_reduction: must be one of 'near_field', 'far_field', 'off' (got 'far')",
        ),
        ("[realtime]\nnoise_reduction = false", "realtime.noise_reduction: must be one of"),
        ("[realtime]\nspeed = 0.2", "realtime.speed: must be ≥ 0.25 (got 0.2)"),
        ("[realtime]\nspeed = 2", "realtime.speed: must be ≤ 1.5 (got 2)"),
        (
            '[realtime]\nreasoning_effort = "low"',
            "realtime.reasoning_effort: model 'gpt-realtime' does not reason",
        ),
        (
            '[realtime]\nmodel = "gpt-realtime-mini"\nreasoning_effort = "low"',
            "realtime.reasoning_effort: model 'gpt-realtime-mini' does not reason",
        ),
        (
            '[realtime]\nmodel = "gpt-realtime-2025-08-28"\nreasoning_effort = "low"',
            "realtime.reasoning_effort: model 'gpt-realtime-2025-08-28' does not reason",
        ),
        (
            '[realtime]\nmodel = "gpt-realtime-2"\nreasoning_effort = "max"',
            "realtime.reasoning_effort: must be one of 'minimal', 'low', 'medium', 'high', 'xhigh'",
        ),
        ('[realtime]\nmodel = "GPT realtime"', "realtime.model: must be a model name"),
        ('[realtime]\nlanguage = "eng"', "realtime.language: must be a two-letter ISO-639-1 code"),
        ('[realtime]\nlanguage = "EN"', "realtime.language: must be a two-letter ISO-639-1 code"),
        (
            '[realtime]\ntranscription_keywords = ["Nabu"]',
            "realtime.transcription_keywords: only gpt-transcribe and gpt-live-transcribe take",
        ),
        (
            '[realtime]\ntranscription_model = "gpt-transcribe"\ntranscription_keywords = [""]',
            "realtime.transcription_keywords: keywords must not be empty",
        ),
        (
            '[realtime]\ntranscription_model = "gpt-realtime-whisper"\ntranscription_prompt = "x"',
            "realtime.transcription_prompt: gpt-realtime-whisper takes no prompt",
        ),
        (
            '[realtime]\ntranscription_model = ""\nlanguage = "en"',
            "realtime.transcription_model: transcription is off",
        ),
        ('[agent]\nvoice = "nova"', "agent.voice: unknown voice 'nova' (built-in: alloy, ash"),
        ('[agent]\nvoice = "voice_"', "agent.voice: unknown voice 'voice_'"),
        (
            "[realtime.turn_detection]\nthreshold = 0.5",
            "realtime.turn_detection: only used when the server ends turns",
        ),
        (
            SERVER_TURNS + "[realtime.turn_detection]\nthreshold = 1.5",
            "realtime.turn_detection.threshold: must be ≤ 1.0 (got 1.5)",
        ),
        (
            SERVER_TURNS + "[realtime.turn_detection]\nthreshold = -0.1",
            "realtime.turn_detection.threshold: must be ≥ 0.0 (got -0.1)",
        ),
        (
            SERVER_TURNS + "[realtime.turn_detection]\nprefix_padding_ms = -1",
            "realtime.turn_detection.prefix_padding_ms: must be ≥ 0 (got -1)",
        ),
        (
            SERVER_TURNS + "[realtime.turn_detection]\nsilence_duration_ms = 20000",
            "realtime.turn_detection.silence_duration_ms: must be ≤ 10000 (got 20000)",
        ),
        (
            SERVER_TURNS + "[realtime.turn_detection]\nsilence_duration_ms = 500.0",
            "realtime.turn_detection.silence_duration_ms: must be an integer (got 500.0)",
        ),
        (
            SERVER_TURNS + "[realtime.turn_detection]\nidle_timeout_ms = 1000",
            "realtime.turn_detection.idle_timeout_ms: must be ≥ 5000 (got 1000)",
        ),
        (
            SERVER_TURNS + "[realtime.turn_detection]\nidle_timeout_ms = 60000",
            "realtime.turn_detection.idle_timeout_ms: must be ≤ 30000 (got 60000)",
        ),
        (
            SERVER_TURNS
            + '[realtime.turn_detection]\ntype = "semantic_vad"\nsilence_duration_ms = 500',
            "realtime.turn_detection.silence_duration_ms: only for type 'server_vad'",
        ),
        (
            SERVER_TURNS + '[realtime.turn_detection]\neagerness = "low"',
            "realtime.turn_detection.eagerness: only for type 'semantic_vad'",
        ),
        (
            SERVER_TURNS + '[realtime.turn_detection]\ntype = "semantic_vad"\neagerness = "eager"',
            "realtime.turn_detection.eagerness: must be one of 'low', 'medium', 'high', 'auto'",
        ),
        (
            SERVER_TURNS + '[realtime.turn_detection]\ntype = "vad"',
            "realtime.turn_detection.type: must be one of 'server_vad', 'semantic_vad'",
        ),
        (
            SERVER_TURNS + "[realtime.turn_detection]\nsilence_ms = 5",
            "realtime.turn_detection.silence_ms: unknown key; did you mean 'silence_duration_ms'?",
        ),
    ],
)
def test_session_option_mistakes_are_named(text: str, expected: str) -> None:
    """Each bad session option is one line naming the key, what it must be and what it got."""
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected), problems


@pytest.mark.parametrize("model", ["gpt-realtime-2", "gpt-realtime-2.1", "gpt-realtime-2.1-mini"])
def test_reasoning_models_take_an_effort(model: str) -> None:
    """The gpt-realtime-2 family takes every effort the SDK lists."""
    for effort in ("minimal", "low", "medium", "high", "xhigh"):
        config = parse(MINIMAL + f'[realtime]\nmodel = "{model}"\nreasoning_effort = "{effort}"')
        assert config.realtime.reasoning_effort == effort


def test_every_session_option_maps_into_the_session() -> None:
    """[realtime] options become the SessionConfig the codec sends; unset ones stay unset."""
    from hark import events as ev
    from hark.service.wiring import session_base

    text = (
        SERVER_TURNS
        + """[realtime]
model = "gpt-realtime-2.1-mini"
reasoning_effort = "high"
max_output_tokens = 300
truncation = { retention_ratio = 0.7, post_instructions_tokens = 6000 }
noise_reduction = "near_field"
speed = 0.8
transcription_model = "gpt-transcribe"
language = "fr"
transcription_prompt = "Cuisine."
transcription_keywords = ["ratatouille"]
[realtime.turn_detection]
threshold = 0.7
prefix_padding_ms = 200
silence_duration_ms = 900
idle_timeout_ms = 8000
"""
    )
    session = session_base(parse(MINIMAL + text))
    assert session == ev.SessionConfig(
        model="gpt-realtime-2.1-mini",
        speed=0.8,
        turn_detection=ev.TurnDetection(
            threshold=0.7, prefix_padding_ms=200, silence_duration_ms=900, idle_timeout_ms=8000
        ),
        transcription_model="gpt-transcribe",
        transcription_language="fr",
        transcription_prompt="Cuisine.",
        transcription_keywords=("ratatouille",),
        noise_reduction="near_field",
        max_output_tokens=300,
        truncation=ev.Truncation(0.7, 6000),
        reasoning_effort="high",
    )
    semantic = parse(
        MINIMAL
        + SERVER_TURNS
        + '[realtime.turn_detection]\ntype = "semantic_vad"\neagerness = "low"'
    )
    assert session_base(semantic).turn_detection == ev.TurnDetection(
        type="semantic_vad", eagerness="low"
    )
    plain = session_base(parse(MINIMAL))
    assert plain == ev.SessionConfig(transcription_model="gpt-4o-mini-transcribe")
    words = parse(MINIMAL + '[realtime]\ntruncation = "disabled"\nmax_output_tokens = "inf"')
    assert (session_base(words).truncation, session_base(words).max_output_tokens) == (
        "disabled",
        "inf",
    )


def test_wake_word_settings() -> None:
    """A shipped name, or a model file relative to the config's folder; a typo is named."""
    text = MINIMAL + '[trigger]\nmode = "wake"\nwake_word = "models/mine.json"\nfollow_up_s = 4\n'
    config = parse(text, base_dir=Path("/etc/hark"))
    assert config.trigger.wake_word == "/etc/hark/models/mine.json"
    assert config.trigger.follow_up_s == 4.0
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + '[trigger]\nmode = "wake"\nwake_word = "okay_nabo"\n')
    assert info.value.problems == [
        "trigger.wake_word: unknown wake word 'okay_nabo'; did you mean 'okay_nabu'? "
        "(shipped: okay_nabu, hey_jarvis, hey_mycroft, alexa; or the path of a model's .json)"
    ]
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + "[trigger]\nwake_threshold = 1.5\nfollow_up_s = -1\n")
    assert [p.split(":")[0] for p in info.value.problems] == [
        "trigger.wake_threshold",
        "trigger.follow_up_s",
    ]


def test_wake_and_button_needs_the_button_pin() -> None:
    data = parse(MINIMAL).model_dump()
    data["gpio"]["button_pin"] = None
    data["trigger"]["mode"] = "wake+button"
    with pytest.raises(ValueError, match=r"gpio\.button_pin: required when trigger\.mode"):
        Config.model_validate(data)
    data["trigger"]["mode"] = "wake"
    assert Config.model_validate(data).gpio.button_pin is None


def test_shipped_wake_words_match_the_package() -> None:
    from hark.audio import wake

    assert cfg.WAKE_WORDS == wake.SHIPPED
    for name in wake.SHIPPED:
        assert wake.model_path(name).is_file()
