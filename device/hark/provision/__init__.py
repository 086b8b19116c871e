"""SD-card provisioning: one command turns a Raspberry Pi OS card or image into a hark device.

The package must not be imported by the daemon's runtime modules (it runs on the owner's
workstation); ``main(argv)`` is its only entry point (``python -m hark.provision``).
"""

from __future__ import annotations

from hark.provision.command import main

__all__ = ["main"]
