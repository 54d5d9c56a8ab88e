"""``python -m spikelm`` runs the command line."""

import sys

from spikelm.cli import main

sys.exit(main())
