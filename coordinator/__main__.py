"""``python -m coordinator``: the ``prefill-startup`` command line."""

import sys

from coordinator.cli import main

sys.exit(main())
