"""GPIO adapters on gpiozero's MockFactory: button events, LED patterns, release on close."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import LED
from gpiozero.exc import BadPinFactory
from gpiozero.pins.mock import MockFactory
from hark.events import ButtonLongPressed, ButtonPressed, ButtonReleased, Event
from hark.gpio import PATTERNS, GpioButton, GpioError, GpioIndicator
from hark.testing import mock_pins, until


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    """A PWM-capable MockFactory as gpiozero's pin factory, the previous one restored after."""
    with mock_pins() as factory:
        yield factory


async def test_button_posts_press_release_and_long_press(pins: MockFactory) -> None:
    """Press, hold past long_press_s, release: ButtonPressed, ButtonLongPressed, ButtonReleased."""
    posted: list[Event] = []
    button = GpioButton(17, pull_up=True, bounce_s=None, long_press_s=0.05)
    task = asyncio.create_task(button.run(posted.append))
    await asyncio.sleep(0)
    pin = pins.pin(17)
    pin.drive_low()  # pull-up: pressing connects the pin to ground
    await until(lambda: any(isinstance(e, ButtonLongPressed) for e in posted))
    pin.drive_high()
    await until(lambda: any(isinstance(e, ButtonReleased) for e in posted))
    assert [type(e) for e in posted] == [ButtonPressed, ButtonLongPressed, ButtonReleased]
    released = posted[-1]
    assert isinstance(released, ButtonReleased) and released.held_s > 0

    posted.clear()
    pin.drive_low()
    pin.drive_high()  # a tap: no long press
    await until(lambda: len(posted) == 2)
    assert [type(e) for e in posted] == [ButtonPressed, ButtonReleased]

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    LED(17).close()  # the pin was released on cancel


def states_seen(pin: Any) -> set[float]:
    return {round(float(s.state), 2) for s in pin.states}


async def test_pwm_led_patterns(pins: MockFactory) -> None:
    """Each pattern drives the PWM pin: steady levels, blinking and pulsing; off on close."""
    led = GpioIndicator(18, pwm=True)
    pin = pins.pin(18)
    led.show("listening")
    assert pin.state == 1.0
    led.show("idle")
    assert pin.state == pytest.approx(PATTERNS["idle"].level)
    pin.clear_states()
    led.show("connecting")
    await until(lambda: {0.0, 1.0} <= states_seen(pin))
    pin.clear_states()
    led.show("thinking")  # a pulse passes through intermediate levels
    await until(lambda: len(states_seen(pin) - {0.0, 1.0}) >= 3)
    led.show("error")
    assert led.pattern == "error"
    led.close()
    assert pin.state == 0.0
    led.close()  # idempotent
    LED(18).close()  # the pin is free again


async def test_on_off_led_patterns(pins: MockFactory) -> None:
    """Without PWM: dim idle is off, thinking blinks, speaking and listening are on."""
    led = GpioIndicator(23, pwm=False)
    pin = pins.pin(23)
    led.show("idle")
    assert not pin.state
    led.show("speaking")
    assert pin.state
    pin.clear_states()
    led.show("thinking")
    await until(lambda: {0.0, 1.0} <= states_seen(pin))
    led.show("listening")
    assert pin.state
    led.close()
    assert not pin.state


async def test_rgb_led_colours(pins: MockFactory) -> None:
    """An RGB LED shows a colour per pattern and goes dark on close."""
    led = GpioIndicator(rgb_pins=(5, 6, 13), pwm=True)
    red, green, blue = (pins.pin(n) for n in (5, 6, 13))
    led.show("listening")
    assert (red.state, green.state, blue.state) == (0.0, 1.0, 0.0)
    blue.clear_states()
    led.show("thinking")
    await until(lambda: len(states_seen(blue) - {0.0, 1.0}) >= 3)
    led.show("error")
    await until(lambda: red.state == 1.0)
    led.close()
    assert (red.state, green.state, blue.state) == (0.0, 0.0, 0.0)


def test_missing_gpio_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pin factory (not a Pi): GpioError names the pin and suggests the mock factory."""

    def no_factory(*args: Any, **kwargs: Any) -> Any:
        raise BadPinFactory("Unable to load any default pin factory!")

    monkeypatch.setattr("hark.gpio.Button", no_factory)
    monkeypatch.setattr("hark.gpio.PWMLED", no_factory)
    with pytest.raises(GpioError, match=r"talk button on GPIO 17: .*GPIOZERO_PIN_FACTORY=mock"):
        GpioButton(17)
    with pytest.raises(GpioError, match="status LED on GPIO 18"):
        GpioIndicator(18)
    with pytest.raises(ValueError, match="exactly one"):
        GpioIndicator()
