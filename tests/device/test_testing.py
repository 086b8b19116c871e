"""hark.testing's own promises: lean to import, pins torn down, a hang fails the test."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from hark.events import Event, LinkUp, PlaybackStopped
from hark.testing import RecordingLink, RecordingNotifier, RecordingSpeaker, mock_pins, until


def test_importing_the_fakes_does_not_import_gpiozero() -> None:
    """gpiozero is imported only by ``mock_pins`` (the demo and audio tests never need it)."""
    code = "import sys, hark.testing; print('gpiozero' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_mock_pins_installs_mock_factory_and_restores_the_previous_one() -> None:
    """Inside: gpiozero's default is the MockFactory (PWM pins); after: the old default."""
    from gpiozero import PWMLED, Device

    before = Device.pin_factory
    with mock_pins() as factory:
        assert Device.pin_factory is factory
        led = PWMLED(27)
        led.value = 0.5
        assert factory.pin(27).state == 0.5
    assert Device.pin_factory is before


async def test_until_fails_the_test_instead_of_hanging() -> None:
    """A condition never reached is an AssertionError after the guard time."""
    await until(lambda: True, timeout_s=0.0)
    with pytest.raises(AssertionError, match="not reached"):
        await until(lambda: False, timeout_s=0.05)


async def test_recording_fakes_answer_like_their_ports() -> None:
    """The link is up when asked; the speaker reports what it heard; the notifier keeps
    sd_notify lines and their times."""
    posted: list[Event] = []
    link, speaker = RecordingLink(), RecordingSpeaker(heard_at_stop=0.5)
    link.connect()
    runs = [
        asyncio.create_task(link.run(posted.append)),
        asyncio.create_task(speaker.run(posted.append)),
    ]
    await until(lambda: bool(posted))
    assert posted == [LinkUp("sess_fake", None)] and link.calls == ["connect"]
    speaker.play("item_1", bytes(4800))  # 100 ms
    speaker.stop()
    assert posted[-1] == PlaybackStopped("item_1", 50, interrupted=True)
    for run in runs:
        run.cancel()
    notifier = RecordingNotifier()
    notifier.ready()
    notifier.status("idle")
    assert notifier.messages == ["READY=1", "STATUS=idle"] and notifier.statuses == ["idle"]
    assert len(notifier.times("ready")) == 1
