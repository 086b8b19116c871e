"""``python -m hark.provision``: the entry point scripts/provision-sd calls.

It must not hold logic of its own; everything lives in ``hark.provision.command``.
"""

from __future__ import annotations

import sys

from hark.provision import main

sys.exit(main())
