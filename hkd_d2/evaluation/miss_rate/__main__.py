"""``python -m hkd_d2.evaluation.miss_rate GT DT [options]`` (see :func:`.cli.main`)."""
import sys

from .cli import main

sys.exit(main())
