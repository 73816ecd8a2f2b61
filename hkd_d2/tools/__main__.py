"""``python -m hkd_d2.tools COMMAND [ARGS]``: see :mod:`hkd_d2.tools.cli`."""
import sys

from .cli import main

sys.exit(main())
