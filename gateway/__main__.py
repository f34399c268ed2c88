"""``python -m gateway`` is ``ecgw``."""

import sys

from gateway.cli import main

sys.exit(main())
