"""``python -m mpma.cli ...``: the ``mpma`` command (used by torchrun: ``-m mpma.cli``)."""

import sys

from mpma.cli import main

sys.exit(main())
