"""GPIO through gpiozero: the talk button (``Trigger``), the status LED(s) (``Indicator``), relays.

gpiozero calls back on its own threads; those callbacks only ``post`` an event (the
one thing that crosses threads).  LED patterns run on gpiozero's own background
threads (``blink``/``pulse``), so ``show`` never blocks the loop.  This module must
not import the conversation core, the link or the sound card; a missing pin factory
(not a Pi) becomes a ``GpioError`` naming the pin, never a bare gpiozero traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpiozero import LED, PWMLED, RGBLED, Button, DigitalOutputDevice
from gpiozero.exc import GPIOZeroError

from hark.events import ButtonLongPressed, ButtonPressed, ButtonReleased, LedPattern
from hark.ports import Post

log = logging.getLogger(__name__)


class GpioError(Exception):
    """A GPIO device could not be opened; the message names the pin and the likely cause."""


def _open(what: str, pins: str, make: Callable[[], Any]) -> Any:
    """``make()`` the device; gpiozero's pin-factory fallback warnings (one stderr line
    each, every time a device is made) become part of the one error, or a debug line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return make()
        except (GPIOZeroError, OSError, RuntimeError) as exc:
            if "pin factory" in str(exc).lower():
                # Why each driver failed goes last: STATUS shows only the first 200 chars.
                tried = "; ".join(str(w.message).removeprefix("Falling back from ") for w in caught)
                raise GpioError(
                    f"{what} on GPIO {pins}: no GPIO pin driver here (not a Raspberry Pi, or "
                    "python3-lgpio missing; for a laptop or tests set GPIOZERO_PIN_FACTORY=mock); "
                    f"gpiozero: {exc}{f' (tried {tried})' if tried else ''}"
                ) from exc
            raise GpioError(f"{what} on GPIO {pins}: {exc}") from exc
        finally:
            for warning in caught:
                log.debug("gpiozero: %s", warning.message)


# --------------------------------------------------------------------------- button


class GpioButton:
    """The talk button: press, release (with how long it was held) and long press."""

    def __init__(
        self,
        pin: int,
        *,
        pull_up: bool = True,
        bounce_s: float | None = 0.02,
        long_press_s: float = 1.5,
        pin_factory: Any = None,
    ) -> None:
        self.pin = pin
        self._button = _open(
            "talk button",
            str(pin),
            lambda: Button(
                pin,
                pull_up=pull_up,
                bounce_time=bounce_s or None,
                hold_time=long_press_s,
                pin_factory=pin_factory,
            ),
        )
        self._pressed_at: float | None = None

    async def run(self, post: Post) -> None:
        """Post button events until cancelled, then detach the callbacks and free the pin."""

        def pressed() -> None:
            self._pressed_at = time.monotonic()
            post(ButtonPressed())

        def released() -> None:
            held_s = time.monotonic() - self._pressed_at if self._pressed_at is not None else 0.0
            self._pressed_at = None
            post(ButtonReleased(held_s=held_s))

        def held() -> None:
            post(ButtonLongPressed())

        self._button.when_pressed = pressed
        self._button.when_released = released
        self._button.when_held = held
        try:
            await asyncio.Event().wait()
        finally:
            self.close()

    def close(self) -> None:
        self._button.when_pressed = None
        self._button.when_released = None
        self._button.when_held = None
        self._button.close()


# --------------------------------------------------------------------------- LEDs

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class _Look:
    """How one pattern looks: steady level, blink (on/off s) or pulse (fade in/out s)."""

    kind: str  # "steady" | "blink" | "pulse"
    level: float = 1.0
    a_s: float = 0.0
    b_s: float = 0.0
    colour: Colour = (1.0, 1.0, 1.0)


# One LED: listening is steady, a follow-up window flashes once a second, thinking pulses
# fast, speaking breathes slowly; without PWM a pulse degrades to a blink and a dim level
# to off.
PATTERNS: dict[LedPattern, _Look] = {
    "off": _Look("steady", 0.0, colour=(0.0, 0.0, 0.0)),
    "idle": _Look("steady", 0.04, colour=(0.0, 0.0, 0.04)),
    "connecting": _Look("blink", 1.0, 0.5, 0.5, colour=(1.0, 0.6, 0.0)),
    "listening": _Look("steady", 1.0, colour=(0.0, 1.0, 0.0)),
    # The mic is open for a follow-up but nothing is sent: a short green flash a second.
    "follow_up": _Look("blink", 1.0, 0.1, 0.9, colour=(0.0, 1.0, 0.0)),
    "thinking": _Look("pulse", 1.0, 0.25, 0.25, colour=(0.0, 0.3, 1.0)),
    "speaking": _Look("pulse", 1.0, 0.8, 0.8, colour=(0.0, 1.0, 1.0)),
    "error": _Look("blink", 1.0, 0.08, 0.08, colour=(1.0, 0.0, 0.0)),
}
_NO_PWM_BLINK_S = {"thinking": 0.2, "speaking": 0.0}  # speaking without PWM: steady on


class GpioIndicator:
    """The status LED: a single LED (PWM or on/off) or an RGB LED, a pattern per phase."""

    def __init__(
        self,
        pin: int | None = None,
        *,
        rgb_pins: tuple[int, int, int] | None = None,
        pwm: bool = True,
        active_high: bool = True,
        pin_factory: Any = None,
    ) -> None:
        if (pin is None) == (rgb_pins is None):
            raise ValueError("GpioIndicator needs exactly one of pin or rgb_pins")
        self.pwm = pwm
        self.pattern: LedPattern = "off"
        self._closed = False
        if rgb_pins is not None:
            r, g, b = rgb_pins
            self._led: Any = _open(
                "RGB LED",
                f"{r}/{g}/{b}",
                lambda: RGBLED(r, g, b, active_high=active_high, pwm=pwm, pin_factory=pin_factory),
            )
            self._rgb = True
        else:
            cls = PWMLED if pwm else LED
            self._led = _open(
                "status LED",
                str(pin),
                lambda: cls(pin, active_high=active_high, pin_factory=pin_factory),
            )
            self._rgb = False

    def show(self, pattern: LedPattern) -> None:
        """Switch to ``pattern``; gpiozero's background thread animates it."""
        if self._closed or pattern == self.pattern:
            return
        self.pattern = pattern
        look = PATTERNS[pattern]
        try:
            if self._rgb:
                self._show_rgb(pattern, look)
            else:
                self._show_mono(pattern, look)
        except GPIOZeroError as exc:  # a pin gone bad must not stop the daemon
            log.warning("LED pattern %s failed: %s", pattern, exc)

    def _show_mono(self, pattern: LedPattern, look: _Look) -> None:
        led = self._led
        kind = look.kind
        if kind == "pulse" and not self.pwm:
            blink_s = _NO_PWM_BLINK_S.get(pattern, look.a_s)
            if blink_s:
                led.blink(on_time=blink_s, off_time=blink_s)
            else:
                led.on()
        elif kind == "pulse":
            led.pulse(fade_in_time=look.a_s, fade_out_time=look.b_s)
        elif kind == "blink":
            led.blink(on_time=look.a_s, off_time=look.b_s)
        elif self.pwm:
            led.value = look.level
        elif look.level >= 0.5:
            led.on()
        else:
            led.off()

    def _show_rgb(self, pattern: LedPattern, look: _Look) -> None:
        led = self._led
        colour = look.colour
        if not self.pwm:
            colour = (float(colour[0] >= 0.5), float(colour[1] >= 0.5), float(colour[2] >= 0.5))
        blink_s = look.a_s if look.kind == "blink" else 0.0
        if look.kind == "pulse" and self.pwm:
            led.pulse(fade_in_time=look.a_s, fade_out_time=look.b_s, on_color=colour)
            return
        if look.kind == "pulse":
            blink_s = _NO_PWM_BLINK_S.get(pattern, look.a_s)
        if blink_s:
            led.blink(on_time=blink_s, off_time=blink_s, on_color=colour)
        else:
            led.color = colour

    def close(self) -> None:
        """Off, and release the pins (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._led.off()
        finally:
            self._led.close()
        self.pattern = "off"


# --------------------------------------------------------------------------- outputs


class GpioOutput:
    """A relay or lamp switched by a tool (``[[agent.outputs]]``)."""

    def __init__(
        self,
        name: str,
        pin: int,
        *,
        active_high: bool = True,
        initial: bool = False,
        pin_factory: Any = None,
    ) -> None:
        self.name = name
        self.pin = pin
        self._device: Any = _open(
            f"output {name!r}",
            str(pin),
            lambda: DigitalOutputDevice(
                pin, active_high=active_high, initial_value=initial, pin_factory=pin_factory
            ),
        )

    def on(self) -> None:
        self._device.on()

    def off(self) -> None:
        self._device.off()

    @property
    def is_active(self) -> bool:
        return bool(self._device.is_active)

    def close(self) -> None:
        self._device.close()
