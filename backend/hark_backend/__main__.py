"""``python -m hark_backend``: the same as the ``hark-backend`` command.

It must not hold any logic of its own.
"""

import sys

from hark_backend.cli import main

sys.exit(main())
