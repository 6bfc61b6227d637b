"""``python -m qkdops_cli`` is the ``qkdops`` command."""

import sys

from qkdops_cli.cli import main

sys.exit(main())
