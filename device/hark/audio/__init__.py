"""Audio: PCM helpers, capture, playback, echo suppression, cues, and the PortAudio sound card."""
