"""hark: a Raspberry Pi voice appliance for OpenAI Realtime agents."""

__version__ = "0.1.0"
