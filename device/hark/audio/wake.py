"""The wake and stop words: microWakeWord models (``pymicro-wakeword``) on 16 kHz audio.

``MicroWordSpotter`` implements ``hark.ports.WordSpotter``: bytes in, words heard (with
where in those bytes they ended) out; no threads, no loop, no clock (time is counted in
samples), so the capture chain runs it on the capture thread and tests feed it WAVs.
It is built only when the config asks for a wake or stop word, and only then is
``pymicro_wakeword`` (TensorFlow Lite through ctypes) imported: the ``wake`` extra.

Models: a name pymicro-wakeword ships (``okay_nabu``, ``hey_jarvis``, ``hey_mycroft``,
``alexa``), ``stop`` (vendored in ``hark/audio/models``: the wheel lacks it), or the path
of an owner's model JSON (microWakeWord's format, its ``.tflite`` beside it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hark.events import StopWordHeard, WakeWordHeard, Word

if TYPE_CHECKING:
    from collections.abc import Iterable

log = logging.getLogger(__name__)

RATE_HZ = 16_000
"""The models' rate: 16 kHz PCM16 mono."""
STEP_BYTES = 320
"""10 ms at 16 kHz: the feature front end's step, so detections are placed to 10 ms."""
SHIPPED = ("okay_nabu", "hey_jarvis", "hey_mycroft", "alexa")
"""Wake words the pymicro-wakeword wheel ships (``trigger.wake_word`` may name one)."""
MODELS_DIR = Path(__file__).with_name("models")
STOP_MODEL = MODELS_DIR / "stop.json"


class WakeWordError(Exception):
    """A model cannot be used (unknown name, unreadable file, not a microWakeWord model),
    or pymicro-wakeword is not installed (``missing_package``)."""

    def __init__(self, message: str, *, missing_package: bool = False) -> None:
        super().__init__(message)
        self.missing_package = missing_package


@dataclass
class _Model:
    word: Word
    name: str
    detector: Any  # pymicro_wakeword.MicroWakeWord
    cutoff: float
    quiet_until: int = 0  # sample count: refractory after a detection
    fresh: bool = True  # state to clear before its next use


def _import() -> Any:
    try:
        import pymicro_wakeword
    except ImportError as exc:
        raise WakeWordError(
            f"the wake/stop word needs pymicro-wakeword: pip install 'hark-voice[wake]' ({exc})",
            missing_package=True,
        ) from None
    except OSError as exc:  # its bundled TensorFlow Lite library does not load here
        raise WakeWordError(
            f"pymicro-wakeword is installed but cannot load TensorFlow Lite: {exc}",
            missing_package=True,
        ) from None
    return pymicro_wakeword


def model_path(spec: str | Path) -> Path:
    """The model JSON a ``trigger.wake_word`` value (or ``"stop"``) names."""
    if isinstance(spec, Path) or "/" in spec or spec.endswith(".json"):
        return Path(spec)
    if spec == "stop":
        return STOP_MODEL
    if spec not in SHIPPED:
        raise WakeWordError(
            f"unknown wake word {spec!r}: use one of {', '.join(SHIPPED)} or the path of "
            "a microWakeWord model's .json"
        )
    mww = _import()
    return Path(mww.__file__).with_name("models") / f"{spec}.json"


def load_detector(spec: str | Path, cutoff: float | None = None) -> tuple[Any, float, str]:
    """A ``MicroWakeWord`` for ``spec``, its probability cutoff, its phrase.

    The JSON is checked here so a bad file is one clear line, not a KeyError from the
    library (which also prints the whole config to stdout).
    """
    path = model_path(spec)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        micro = config["micro"]
        tflite = path.parent / str(config["model"])
        window = int(micro["sliding_window_size"])
        default_cutoff = float(micro["probability_cutoff"])
        phrase = str(config.get("wake_word", path.stem))
    except OSError as exc:
        raise WakeWordError(f"cannot read the model {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise WakeWordError(
            f"{path} is not a microWakeWord model config ({type(exc).__name__}: {exc}; "
            "needs model, micro.probability_cutoff, micro.sliding_window_size)"
        ) from None
    if not tflite.is_file():
        raise WakeWordError(f"the model file {tflite} (named by {path}) does not exist")
    mww = _import()
    lib = next(iter((Path(mww.__file__).parent / "lib").glob("*tensorflowlite_c.*")), None)
    if lib is None:
        raise WakeWordError(
            "pymicro-wakeword has no TensorFlow Lite library for this platform",
            missing_package=True,
        )
    try:
        detector = mww.MicroWakeWord(
            path.stem,
            wake_word=phrase,
            tflite_model=tflite,
            probability_cutoff=default_cutoff,
            sliding_window_size=window,
            trained_languages=list(micro.get("trained_languages", [])),
            libtensorflowlite_c_path=lib,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise WakeWordError(f"cannot load the model {tflite}: {exc}") from None
    return detector, default_cutoff if cutoff is None else cutoff, phrase


class MicroWordSpotter:
    """The wake word and/or the stop word on one 16 kHz stream (``ports.WordSpotter``).

    ``wake``: a model spec (see ``model_path``) or None; ``stop``: spot "stop" too.
    ``*_cutoff``: the probability (0-1) above which a word counts; None is the model's
    own.  ``refractory_s``: after a word is heard it is not heard again for this long.
    Only armed words are computed; the feature front end runs on all audio it is given.
    """

    def __init__(
        self,
        wake: str | Path | None,
        *,
        stop: bool = False,
        wake_cutoff: float | None = None,
        stop_cutoff: float | None = None,
        refractory_s: float = 2.0,
    ) -> None:
        mww = _import()
        self._features = mww.MicroWakeWordFeatures()
        self._models: dict[Word, _Model] = {}
        if wake is not None:
            detector, cutoff, phrase = load_detector(wake, wake_cutoff)
            self._models["wake"] = _Model("wake", phrase, detector, cutoff)
        if stop:
            detector, cutoff, phrase = load_detector("stop", stop_cutoff)
            self._models["stop"] = _Model("stop", phrase, detector, cutoff)
        self.words: frozenset[Word] = frozenset(self._models)
        """The words this spotter can hear."""
        self.refractory_samples = int(refractory_s * RATE_HZ)
        self._armed: frozenset[Word] = frozenset()
        self._pending = b""  # < 10 ms carried to the next call
        self._samples = 0  # fed while armed, the refractory clock
        self.heard: dict[Word, int] = dict.fromkeys(self._models, 0)
        self.peak: dict[Word, float] = dict.fromkeys(self._models, 0.0)
        """Highest probability seen per word (``hark doctor``, the bench)."""

    @property
    def armed(self) -> frozenset[Word]:
        return self._armed

    def arm(self, words: frozenset[Word]) -> None:
        """Listen for ``words`` (those this spotter has) from the next ``process`` on.

        Called from the loop thread: one reference assignment, read by the capture
        thread; a word armed anew has its model state cleared there, before use.
        """
        words = words & self.words
        for word in words - self._armed:
            self._models[word].fresh = True
        self._armed = words

    def process(self, pcm16k: bytes) -> list[tuple[int, WakeWordHeard | StopWordHeard]]:
        """Words heard in ``pcm16k`` (sample offsets where they ended).

        The feature front end runs on every call, armed or not: its noise estimate and
        gain adapt over seconds, and a "stop" said right as a reply starts must meet a
        settled front end (reset on arming, a model heard "stop" at p=0.49, not 0.81).
        The models (most of the cost) run only while armed.
        """
        armed = self._armed
        models = [self._models[w] for w in sorted(armed)]
        for model in models:
            if model.fresh:
                model.fresh = False
                model.detector.reset()
                model.quiet_until = 0
        data = self._pending + pcm16k if self._pending else pcm16k
        offset = -len(self._pending)  # bytes of ``pcm16k`` before data[0]
        heard: list[tuple[int, WakeWordHeard | StopWordHeard]] = []
        end = len(data) - len(data) % STEP_BYTES
        for start in range(0, end, STEP_BYTES):
            self._samples += STEP_BYTES // 2
            for features in self._features.process_streaming(data[start : start + STEP_BYTES]):
                for model in models:
                    if self._hears(model, features):
                        at = max(0, (offset + start + STEP_BYTES) // 2)
                        heard.append((at, _event(model)))
        self._pending = data[end:]
        return heard

    def _hears(self, model: _Model, features: Iterable[Any]) -> bool:
        probability = model.detector.process_streaming_prob(features) or 0.0
        if probability > self.peak[model.word]:
            self.peak[model.word] = probability
        if probability <= model.cutoff or self._samples < model.quiet_until:
            return False
        model.quiet_until = self._samples + self.refractory_samples
        self.heard[model.word] += 1
        log.info("heard the %s word %r (p=%.2f)", model.word, model.name, probability)
        return True

    def close(self) -> None:
        for model in self._models.values():
            model.detector.close()


def _event(model: _Model) -> WakeWordHeard | StopWordHeard:
    return WakeWordHeard(model.name) if model.word == "wake" else StopWordHeard()
