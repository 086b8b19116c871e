"""``hark doctor``: independent checks of config, token, backend, audio and GPIO, each with a fix.

Each check reports rather than raises, so one failure never hides the others; the
result is also blinked and spoken for a screenless device. It must not change any
state (no config written, no pin left open) and must not decide exit codes (the CLI does).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hark.config import Config
    from hark.net.keys import KeyFetchError

log = logging.getLogger(__name__)


@dataclass
class Check:
    """One ``hark doctor`` line: what was checked, the outcome, and how to fix a failure."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def doctor_checks(config_path: str) -> list[Check]:
    """Config, token, backend (a real key is minted), audio devices, the wake/stop word
    models, the audio front end's libraries, GPIO; each independent."""
    from hark.config import ConfigError, load, read_token

    checks: list[Check] = []
    try:
        config = load(config_path)
    except ConfigError as exc:
        fix = f"edit {config_path} (see docs/config.md)"
        if _denied(config_path):
            # /etc/hark is root:hark 0750 and the token hark's own 0600: checking them,
            # and the audio and GPIO access the service has, needs the service's user.
            fix = "run it as the service user: sudo -u hark hark doctor"
        checks.append(Check("config", False, "; ".join(exc.problems), fix))
        return checks
    checks.append(Check("config", True, f"{config_path} is valid"))
    if config.agent.object is not None:
        checks.append(_check_agent(config.agent.object))
    try:
        token: str | None = read_token(config.backend.token_file)
        checks.append(Check("token", True, f"{config.backend.token_file} (mode ok)"))
    except ConfigError as exc:
        token = None
        problem = exc.problems[0].removeprefix("backend.token_file: ")
        checks.append(Check("token", False, problem, "see docs/config.md, 'The device token'"))
    checks.append(_check_backend(config, token))
    checks += _check_audio(config)
    checks += _check_words(config)
    checks += _check_front_end(config)
    checks += _check_gpio(config)
    checks += check_service()
    return checks


def _check_agent(ref: str) -> Check:
    from hark.agents.agent import AgentLoadError, check_object

    try:
        check_object(ref)
    except AgentLoadError as exc:
        fix = "install that module into hark's environment, or fix agent.object"
        return Check("agent", False, str(exc), fix)
    return Check("agent", True, f"{ref} imports")


def check_service(
    unit: str = "hark.service", booted: Path = Path("/run/systemd/system")
) -> list[Check]:
    """The running daemon as systemd sees it: state, restarts and its STATUS line.

    STATUS carries the phase, the last error, what is missing and recent audio
    dropouts, so a daemon that drops audio does not pass for healthy.  Readable by
    any user (no sudo); no check at all where systemd does not run or hark is not
    installed as a service.
    """
    import shutil
    import subprocess

    systemctl = shutil.which("systemctl")
    if systemctl is None or not booted.is_dir():  # booted with systemd: sd_booted()
        return []
    keys = ("LoadState", "ActiveState", "SubState", "NRestarts", "StatusText")
    try:
        result = subprocess.run(
            [systemctl, "show", unit, *(f"--property={k}" for k in keys)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    props = dict(line.partition("=")[::2] for line in result.stdout.splitlines())
    if result.returncode != 0 or props.get("LoadState") != "loaded":
        return []
    state = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"
    restarts = props.get("NRestarts", "0")
    detail = state + (f", restarted {restarts} times" if restarts not in ("", "0") else "")
    if props.get("StatusText"):
        detail += f": {props['StatusText']}"
    failed = props.get("ActiveState") == "failed"
    fix = f"journalctl -u {unit} -e shows why; then systemctl restart {unit}" if failed else ""
    return [Check("service", not failed, detail, fix)]


def _denied(path: str) -> bool:
    """The file, or a folder on the way to it, is not ours to read."""
    try:
        with open(path, "rb"):
            return False
    except PermissionError:
        return True
    except OSError:
        return False


TLS_FIX = (
    "check the clock (timedatectl: a Pi has no clock battery, NTP must sync first) and that "
    "backend.url names the host its certificate is for; a private CA goes in "
    "SSL_CERT_FILE (systemctl edit hark: Environment=SSL_CERT_FILE=/path/ca.pem)"
)


KEY_LIFETIME_MAX_S = 7200
"""OpenAI's longest ``client_secrets`` lifetime (``expires_after.seconds`` is 10..7200)."""
CLOCK_SLACK_S = 300


def _check_backend(config: Config, token: str | None) -> Check:
    if token is None:
        return Check("backend", False, "not tried (no usable token)", "fix the token first")
    import time

    from hark.net.keys import KeyFetchError, KeySource

    try:
        source = KeySource(config.backend.url, token, None, config.backend.timeout_s)
        grant = source.fetch_blocking()
    except ValueError as exc:  # LinkConfigError, or a URL the HTTP client refused
        return Check("backend", False, str(exc), "fix backend.url (see docs/config.md)")
    except KeyFetchError as exc:
        return Check("backend", False, str(exc), _backend_fix(exc))
    left_s = grant.expires_at - time.time()
    clock_fix = (
        "check this device's clock (timedatectl: NTP must have synced) and the backend's; "
        "a backend's key lifetime is --key-ttl-s"
    )
    if left_s <= 0:
        detail = f"the key the backend minted had already expired ({-left_s:.0f} s ago)"
        return Check("backend", False, detail, clock_fix)
    if left_s > KEY_LIFETIME_MAX_S + CLOCK_SLACK_S:
        detail = (
            f"the key the backend minted claims {left_s:.0f} s of life, more than OpenAI's "
            f"{KEY_LIFETIME_MAX_S} s maximum"
        )
        return Check("backend", False, detail, clock_fix)
    return Check("backend", True, f"minted a Realtime key (valid {left_s:.0f} s)")


def _backend_fix(exc: KeyFetchError) -> str:
    """The fix for a failed key fetch: by what went wrong, then by failure class."""
    if exc.cause == "tls":
        return TLS_FIX
    if exc.cause == "redirect":
        return (
            "set backend.url to the exact client_secrets URL the backend serves (hark never "
            "follows a redirect with the device token); if nobody moved the backend, find "
            "out who answers for it"
        )
    if exc.cause == "rate_limited":
        wait = f"{exc.retry_after_s:.0f} s" if exc.retry_after_s is not None else "a minute"
        return (
            f"the backend is rate-limiting this device: wait {wait} and try again; if it "
            "persists, see the backend's --rate-limit (docs/backend.md)"
        )
    if exc.cause == "bad_answer":
        return (
            "backend.url must be the hark-backend's /v1/realtime/client_secrets endpoint "
            "(or one that answers like it); see the backend's log"
        )
    if exc.cause == "bad_url":
        return "fix backend.url (see docs/config.md)"
    fixes = {
        "network": "check the network (ping the backend host) and backend.url",
        "unauthorised": "the device token was refused (revoked or wrong): on the backend "
        "run `hark-backend device rotate NAME` and install the new token",
        "config": "backend.url is probably wrong (it must be the client_secrets endpoint)",
        "server": "the backend (or OpenAI behind it) is failing: see the backend's log",
    }
    return fixes.get(exc.kind, "")


def _check_audio(config: Config) -> list[Check]:
    try:
        import pyaudio

        from hark.audio import portaudio
    except ImportError as exc:
        return [Check("audio", False, f"audio support missing: {exc}", "reinstall hark[device]")]
    portaudio.quiet_alsa()
    checks: list[Check] = []
    try:
        pa = pyaudio.PyAudio()
    except Exception as exc:
        return [Check("audio", False, f"PortAudio failed: {exc}", "check `aplay -l`")]
    try:
        for direction, wanted in (
            ("input", config.audio.input_device),
            ("output", config.audio.output_device),
        ):
            key = f"audio.{direction}_device"
            try:
                device = portaudio.find_device(pa, wanted, direction)  # type: ignore[arg-type]
            except Exception as exc:
                first = str(exc).splitlines()[0]
                checks.append(
                    Check(
                        f"audio {direction}",
                        False,
                        first,
                        f"set {key} to a name or index from `hark devices` (is the user in "
                        "group audio? is the card plugged in?)",
                    )
                )
                continue
            checks.append(
                Check(
                    f"audio {direction}",
                    True,
                    f"[{device.index}] {device.name} ({device.default_rate_hz} Hz)",
                )
            )
    finally:
        pa.terminate()
    return checks


def _check_words(config: Config) -> list[Check]:
    """The wake/stop word models load and run (the daemon loads them at start)."""
    from hark.audio.wake import WakeWordError
    from hark.config import WAKE_MODES
    from hark.events import Word
    from hark.service.wiring import make_spotter

    try:
        spotter = make_spotter(config)
    except WakeWordError as exc:
        fix = (
            "sudo scripts/install-device --extras wake (or pip install 'hark-voice[wake]')"
            if exc.missing_package
            else "fix trigger.wake_word (see docs/config.md)"
        )
        return [Check("words", False, str(exc), fix)]
    if spotter is None:
        return []
    wanted: list[Word] = ["wake"] if config.trigger.mode in WAKE_MODES else []
    if config.trigger.stop_word:
        wanted.append("stop")
    words = frozenset(wanted)
    spotter.arm(words)
    spotter.process(bytes(16_000 * 2))  # one second of silence: the models run
    names = " and ".join(sorted(words))
    return [Check("words", True, f"the {names} word model{'s' * (len(words) > 1)} run")]


def _check_front_end(config: Config) -> list[Check]:
    """The [frontend] stages configured have their libraries (the daemon would run without)."""
    from hark.service.wiring import front_end_configured, front_end_from

    if not front_end_configured(config):
        return []
    from hark.audio import frontend

    f = config.frontend
    try:
        front, _ = front_end_from(config)
    except frontend.FrontEndUnavailableError as exc:
        fix = {
            "speex": "sudo apt install libspeexdsp1",
            "webrtc": "pip install livekit into hark's venv (docs/audio.md)",
        }.get(f.echo_cancel, "sudo scripts/install-device --extras frontend")
        if "webrtc-noise-gain" in str(exc):
            fix = "sudo scripts/install-device --extras frontend"
        return [Check("frontend", False, str(exc), fix)]
    assert front is not None
    stages = [
        s for s, on in (("echo canceller", front.aec), ("noise/gain", front.noise_gain)) if on
    ]
    return [Check("frontend", True, f"{' and '.join(stages)} ready ({f.echo_cancel})")]


def _check_gpio(config: Config) -> list[Check]:
    pins: list[tuple[str, int]] = []
    if config.trigger.mode in ("button", "both") and config.gpio.button_pin is not None:
        pins.append(("button", config.gpio.button_pin))
    if config.gpio.led_pin is not None:
        pins.append(("LED", config.gpio.led_pin))
    for i, pin in enumerate(config.gpio.rgb_pins or ()):
        pins.append((f"RGB {'rgb'[i]}", pin))
    for output in config.agent.outputs:
        pins.append((f"output {output.name!r}", output.pin))
    if not pins:
        return [Check("gpio", True, "no pins configured")]
    try:
        from gpiozero import DigitalInputDevice
    except ImportError as exc:
        return [Check("gpio", False, f"gpiozero missing: {exc}", "reinstall hark[device]")]
    checks: list[Check] = []
    for what, pin in pins:
        try:
            device = DigitalInputDevice(pin)
            device.close()
            checks.append(Check(f"gpio {what}", True, f"GPIO{pin} opens"))
        except Exception as exc:
            checks.append(
                Check(
                    f"gpio {what}",
                    False,
                    f"GPIO{pin}: {exc}",
                    "on a Pi: add the user to group gpio and install python3-lgpio; "
                    "elsewhere: GPIOZERO_PIN_FACTORY=mock",
                )
            )
    return checks


def doctor_announce(config_path: str, failed: list[Check]) -> None:
    """Say the result on a screenless device: blink the LED and speak through the speaker."""
    from hark.config import ConfigError, load

    try:
        config = load(config_path)
    except ConfigError:
        return
    text = (
        "All checks passed."
        if not failed
        else f"{len(failed)} checks failed. First: {failed[0].name}."
    )
    with contextlib.suppress(Exception):
        _blink(config, ok=not failed)
    with contextlib.suppress(Exception):
        _speak(config, text)


def _blink(config: Config, *, ok: bool) -> None:
    if config.gpio.led_pin is None:
        return
    import time

    from gpiozero import LED

    led = LED(config.gpio.led_pin, active_high=config.gpio.led_active_high)
    try:
        on_s, off_s, n = (0.5, 0.3, 2) if ok else (0.1, 0.1, 10)
        for _ in range(n):
            led.on()
            time.sleep(on_s)
            led.off()
            time.sleep(off_s)
    finally:
        led.close()


def _speak(config: Config, text: str) -> None:
    """espeak-ng into a WAV, played on the configured output (best effort)."""
    import shutil
    import subprocess
    import tempfile
    import wave

    import numpy as np
    import pyaudio
    import soxr

    from hark.audio import portaudio

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        subprocess.run([espeak, "-w", str(path), text], check=True, timeout=30)
        with wave.open(str(path)) as w:
            rate_hz = w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    pa = pyaudio.PyAudio()
    try:
        device = portaudio.find_device(pa, config.audio.output_device, "output")
        out_rate = config.audio.output_rate_hz or device.default_rate_hz
        samples = soxr.resample(data.astype(np.float32) / 32768, rate_hz, out_rate)
        samples = np.clip(samples * config.audio.volume, -1, 1)
        stream = pa.open(
            format=pyaudio.paInt16,
            channels=1,
            rate=out_rate,
            output=True,
            output_device_index=device.index,
        )
        try:
            stream.write((samples * 32767).astype(np.int16).tobytes())
        finally:
            stream.close()
    finally:
        pa.terminate()


def print_report(checks: list[Check]) -> list[Check]:
    """One line per check (failures with their fix); returns the failed checks."""
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        print(f"{mark} {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            print(f"     {'':<{width}}  fix: {c.fix}")
    failed = [c for c in checks if not c.ok]
    print("all checks passed" if not failed else f"{len(failed)} check(s) failed")
    return failed
