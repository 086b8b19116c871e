"""Process-wide PortAudio plumbing: one lock, ALSA's chatter and probes, devices, formats.

PortAudio's initialisation and stream open/close are not thread-safe and can wedge
in a driver, so every call goes through ``_serialised`` (one at a time, bounded wait)
and runs off the event loop through ``_off_loop``.  Device listing and matching, and
the choice of rate and channels, live here so ``hark devices`` and ``hark doctor`` use
them without the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import pyaudio

log = logging.getLogger(__name__)

T = TypeVar("T")
Direction = Literal["input", "output"]

MIC_RATES_HZ = (48_000, 24_000, 16_000, 32_000, 44_100)
"""Capture rates in order of preference.  48 kHz is what most USB mics and HATs do, and
webrtcvad takes it (and 16/32 kHz) directly, so the mic's chain resamples only what it
hands out; 24 kHz is the model's own rate.  A device's default comes first when it is a
multiple of 8 kHz, else last: ALSA's plug and pulse devices report 44.1 kHz, which would
cost a fractional resampler on every chunk."""
SPEAKER_RATES_HZ = (48_000, 24_000, 32_000, 16_000, 44_100)


class DeviceNotFound(LookupError):  # noqa: N818 (the name the CLI and config errors use)
    """No device matches the configuration; the message lists what exists."""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate_hz: int
    host_api: str

    def line(self, direction: Direction) -> str:
        channels = self.max_input_channels if direction == "input" else self.max_output_channels
        return f"  [{self.index}] {self.name} ({channels} ch, {self.default_rate_hz} Hz)"


@dataclass(frozen=True, slots=True)
class DeviceList:
    """What PortAudio sees; ``str()`` is what ``hark devices`` prints."""

    inputs: tuple[DeviceInfo, ...]
    outputs: tuple[DeviceInfo, ...]
    default_input: int | None = None
    default_output: int | None = None

    def __str__(self) -> str:
        lines = ["inputs:"]
        lines += [d.line("input") for d in self.inputs] or ["  (none)"]
        lines.append("outputs:")
        lines += [d.line("output") for d in self.outputs] or ["  (none)"]
        return "\n".join(lines)


# --------------------------------------------------------------------------- PortAudio


_alsa_handler: Any = None
_jack_handler: Any = None
_asound: ctypes.CDLL | bool | None = None
_PORTAUDIO = threading.Lock()
"""Pa_Initialize/Pa_Terminate and stream open/close are not thread-safe: one at a time."""
_PORTAUDIO_WAIT_S = 5.0


def _libasound() -> ctypes.CDLL | None:
    global _asound
    if _asound is None:
        name = ctypes.util.find_library("asound")
        try:
            _asound = ctypes.CDLL(name) if name else False
        except OSError:
            _asound = False
    return _asound if isinstance(_asound, ctypes.CDLL) else None


def quiet_alsa() -> None:
    """Silence libasound's and JACK's probe chatter on stderr (not errors), unless debugging.

    Debian's PortAudio links JACK, whose client library prints five lines to the journal
    each time PortAudio starts and no JACK server runs (a device reopening after a
    USB hiccup would repeat them). Its error and info hooks take a no-op, as ALSA's does.
    """
    global _alsa_handler, _jack_handler
    if _alsa_handler is not None or log.isEnabledFor(logging.DEBUG):
        return
    try:
        jack = ctypes.CDLL("libjack.so.0")  # already loaded with PortAudio, if it links it
        _jack_handler = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(lambda _: None)
        jack.jack_set_error_function(_jack_handler)
        jack.jack_set_info_function(_jack_handler)
    except (OSError, AttributeError):  # no JACK: nothing to silence
        pass
    lib = _libasound()
    if lib is None:
        return
    try:
        handler_type = ctypes.CFUNCTYPE(
            None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
        )
        _alsa_handler = handler_type(lambda *_: None)
        lib.snd_lib_error_set_handler(_alsa_handler)
    except (OSError, AttributeError):  # not fatal: the noise is only cosmetic
        _alsa_handler = False


def _release_alsa_probes() -> None:
    """Unload the ALSA plugins PortAudio's device scan loaded and no open stream uses.

    ``Pa_Initialize`` opens every PCM the ALSA configuration defines, which loads their
    plugins and what they link (the a52/lavrate plugins pull in libavcodec and its
    codecs): about 10 MiB of resident memory kept for nothing.  ``snd_config_update_
    free_global`` drops the parsed configuration and unloads unused plugins (PortAudio's
    own ``Pa_Terminate`` calls it).  Called after the device scan and before this
    adapter opens its stream, which then re-reads the configuration and loads only its
    own plugin: called while the new stream was starting, it broke ALSA's ``file``
    plugin in 3 runs out of 10 (it keeps pointers into the configuration).
    """
    lib = _libasound()
    if lib is not None:
        with contextlib.suppress(AttributeError):
            lib.snd_config_update_free_global()


def _keep_thread_state() -> None:
    """Let the calling PortAudio thread keep its Python thread state between callbacks.

    PyAudio enters Python through ``PyGILState_Ensure``/``Release`` on a thread Python
    did not start.  With nothing else holding it, each ``Release`` destroys that thread
    state and the next ``Ensure`` builds a new one, with a fresh mmap'd frame stack and
    its page faults: measured at about a fifth of the capture thread's CPU.  One
    ``Ensure`` that is never released keeps it for the thread's life (a few KiB, once
    per stream opened).  Must be called with the GIL held, from the callback.
    """
    ctypes.pythonapi.PyGILState_Ensure()


def _open_portaudio() -> pyaudio.PyAudio:
    """A fresh PortAudio instance (the device list is read at initialisation)."""
    quiet_alsa()
    return pyaudio.PyAudio()


class _PortAudioBusyError(TimeoutError):
    """Another adapter's PortAudio call has not returned (a wedged driver)."""


def _serialised(fn: Callable[[], T]) -> T:
    if not _PORTAUDIO.acquire(timeout=_PORTAUDIO_WAIT_S):
        raise _PortAudioBusyError("PortAudio is busy (another open or close has not returned)")
    try:
        return fn()
    finally:
        _PORTAUDIO.release()


def _devices(pa: pyaudio.PyAudio) -> list[DeviceInfo]:
    out = []
    for i in range(pa.get_device_count()):
        d = pa.get_device_info_by_index(i)
        api = pa.get_host_api_info_by_index(int(d["hostApi"]))
        out.append(
            DeviceInfo(
                index=i,
                name=str(d["name"]),
                max_input_channels=int(d["maxInputChannels"]),
                max_output_channels=int(d["maxOutputChannels"]),
                default_rate_hz=int(d["defaultSampleRate"]),
                host_api=str(api["name"]),
            )
        )
    return out


def _default_index(pa: pyaudio.PyAudio, direction: Direction) -> int | None:
    try:
        info = (
            pa.get_default_input_device_info()
            if direction == "input"
            else pa.get_default_output_device_info()
        )
    except OSError:
        return None
    return int(info["index"])


def _device_list(pa: pyaudio.PyAudio) -> DeviceList:
    devices = _devices(pa)
    return DeviceList(
        inputs=tuple(d for d in devices if d.max_input_channels > 0),
        outputs=tuple(d for d in devices if d.max_output_channels > 0),
        default_input=_default_index(pa, "input"),
        default_output=_default_index(pa, "output"),
    )


def list_devices() -> DeviceList:
    """Every input and output PortAudio sees, with default rates and channels.

    Initialises PortAudio for the call (slow: it probes every ALSA PCM), so call it
    off the event loop.
    """

    def run() -> DeviceList:
        pa = _open_portaudio()
        try:
            return _device_list(pa)
        finally:
            pa.terminate()

    return _serialised(run)


def find_device(pa: pyaudio.PyAudio, wanted: str | int | None, direction: Direction) -> DeviceInfo:
    """The device for ``wanted``: an index, a case-insensitive name substring, or None for
    the system default.  An exact name beats a substring match.
    """
    listing = _device_list(pa)
    candidates = listing.inputs if direction == "input" else listing.outputs
    if wanted is None or wanted == "":
        index = listing.default_input if direction == "input" else listing.default_output
        match = [d for d in candidates if d.index == index]
    elif isinstance(wanted, int) or wanted.strip().isdigit():
        match = [d for d in candidates if d.index == int(wanted)]
    else:
        needle = wanted.strip().lower()
        match = [d for d in candidates if d.name.lower() == needle] or [
            d for d in candidates if needle in d.name.lower()
        ]
    if match:
        return match[0]
    what = "default device" if wanted in (None, "") else repr(wanted)
    raise DeviceNotFound(f"no {direction} device matches {what}; PortAudio sees:\n{listing}")


def choose_format(
    pa: pyaudio.PyAudio, device: DeviceInfo, direction: Direction, rate_hz: int | None = None
) -> tuple[int, int]:
    """(rate_hz, channels) the device accepts: mono if it can, else stereo to downmix."""
    preferred = MIC_RATES_HZ if direction == "input" else SPEAKER_RATES_HZ
    default = device.default_rate_hz
    if rate_hz:
        rates = [rate_hz]
    elif default % 8_000 == 0:
        rates = [default, *preferred]
    else:
        rates = [*preferred, default]
    max_channels = device.max_input_channels if direction == "input" else device.max_output_channels
    for rate in dict.fromkeys(rates):
        for channels in (1, 2):
            if channels > max_channels:
                continue
            try:
                if direction == "input":
                    ok = pa.is_format_supported(
                        rate,
                        input_device=device.index,
                        input_channels=channels,
                        input_format=pyaudio.paInt16,
                    )
                else:
                    ok = pa.is_format_supported(
                        rate,
                        output_device=device.index,
                        output_channels=channels,
                        output_format=pyaudio.paInt16,
                    )
            except ValueError:
                ok = False
            if ok:
                return rate, channels
    raise DeviceNotFound(
        f"{direction} device [{device.index}] {device.name} accepts none of the rates "
        f"{sorted(set(rates))} Hz as 16-bit mono or stereo"
    )


async def _off_loop(
    fn: Callable[[], T], timeout_s: float, discard: Callable[[T], None] | None = None
) -> T:
    """Run blocking PortAudio work on a daemon thread; a wedged driver only costs a thread.

    A result that arrives after the caller gave up (timed out, or cancelled) goes to
    ``discard`` (on the loop, or on the thread once the loop is gone), so a stream
    opened too late is closed instead of left running with the device held.
    ``asyncio.timeout``, not ``wait_for``: Python 3.11's ``wait_for`` returns the
    result and swallows a cancel that lands in the same loop pass, and the adapter
    then ran on after it was told to stop.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if not fut.done():
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)  # type: ignore[arg-type]
        elif exc is None and discard is not None:
            discard(result)  # type: ignore[arg-type]

    def runner() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is gone; nobody is waiting
                loop.call_soon_threadsafe(settle, None, exc)
            return
        try:
            loop.call_soon_threadsafe(settle, result, None)
        except RuntimeError:  # the loop is gone
            if discard is not None:
                discard(result)

    threading.Thread(target=runner, name="hark-audio-io", daemon=True).start()
    async with asyncio.timeout(timeout_s):
        return await fut
