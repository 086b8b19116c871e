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
from hark.audio.pcm import resample
from hark.testing import read_pcm, speech_wav

from tests.audio_rig import alsa_file_env, coverage
from tests.e2e.conftest import as_int16, committed_audio, match, sent_of, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def test_vad_turn_on_named_alsa_file_devices(sim: Any, tmp_path: Path) -> None:
    """filein/fileout chosen by name: speech in the capture file comes back in the output file.

    The reply may come out in pieces (an unpaced sink outruns a busy loop): it must
    reproduce 90 % of the spoken audio's energy, each piece at correlation ≥ 0.9.
    """
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
            if sessions and coverage(_audible(out), reference) >= 0.9:
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
    assert coverage(_audible(out), reference) >= 0.9, output[-6000:]


def _audible(out: Path) -> np.ndarray:
    """The output file from its first to its last non-zero sample.

    The unpaced file PCM writes silence as fast as it is asked (gigabytes in a minute):
    the file is mapped, not read, and scanned a second of audio at a time.
    """
    if not out.exists() or out.stat().st_size < 2:
        return np.zeros(0, np.int16)
    samples = np.memmap(out, np.int16, mode="r", shape=(out.stat().st_size // 2,))
    found = [
        i + np.flatnonzero(samples[i : i + 48_000])
        for i in range(0, len(samples), 48_000)
        if samples[i : i + 48_000].any()
    ]
    if not found:
        return np.zeros(0, np.int16)
    return np.array(samples[found[0][0] : found[-1][-1] + 1])
