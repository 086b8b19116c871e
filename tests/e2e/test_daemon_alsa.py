"""`hark run` on ALSA file PCMs: devices chosen by name from the config, a vad turn end to end.

It must not rely on timing: the file PCMs are unpaced, so it only checks what landed in
the playback file.  The daemon is a subprocess because ALSA's config path is read when
PortAudio first initialises in a process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hark.pcm import resample
from hark.testing import read_pcm, speech_wav

from tests.audio_rig import alsa_file_env
from tests.e2e.conftest import as_int16, committed_audio, match, sent_of, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def test_vad_turn_on_named_alsa_file_devices(sim: Any, tmp_path: Path) -> None:
    """filein/fileout chosen by name: speech in the capture file comes back in the output file."""
    spoken = read_pcm(speech_wav("what time is it", tmp_path / "q.wav", 48_000), 48_000)
    silence = bytes(48_000 * 2)
    capture = silence + spoken + silence * 3
    env = {**os.environ, **alsa_file_env(tmp_path, capture=capture)}
    env.update(GPIOZERO_PIN_FACTORY="mock", PYTHONUNBUFFERED="1")
    path = write_config(sim, tmp_path, "[trigger]\nmode = 'vad'\n", device="filein")
    text = path.read_text().replace('output_device = "filein"', 'output_device = "fileout"')
    # The raw files carry no format: the config fixes both rates (the file PCMs take any).
    path.write_text(
        text.replace("[audio]\n", "[audio]\ncapture_rate_hz = 48000\noutput_rate_hz = 48000\n")
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "hark.cli", "run", "--config", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = tmp_path / "out.raw"
    reference = as_int16(spoken)
    try:
        # The file PCM is unpaced: it writes silence as fast as it is asked, so its size
        # says nothing; wait until the reply itself is in it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            sessions = [s for s in list(sim.sessions) if sent_of(s, "input_audio_buffer.commit")]
            if sessions and match(_audible(out), reference) >= 0.9:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.communicate()[0]
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    sessions = [s for s in list(sim.sessions) if sent_of(s, "input_audio_buffer.commit")]
    assert sessions, output
    turn = as_int16(committed_audio(sessions[0])[0])
    assert match(turn, as_int16(resample(spoken, 48_000, 24_000))) >= 0.9
    assert match(_audible(out), reference) >= 0.9, output[-6000:]


def _audible(out: Path) -> np.ndarray:
    """The output file without its runs of digital silence.

    An unpaced file PCM drains the jitter buffer faster than replies arrive, so the
    reply may come out in pieces with exact zeros between them; what was played is
    the pieces in order.
    """
    if not out.exists():
        return np.zeros(0, np.int16)
    data = out.read_bytes()
    samples = np.frombuffer(data[: len(data) // 2 * 2], np.int16)
    frames = samples[: len(samples) // 480 * 480].reshape(-1, 480)  # 10 ms at 48 kHz
    return frames[np.any(frames != 0, axis=1)].reshape(-1)
