"""`python -m fewsight` runs the command-line interface."""

import sys

from fewsight.cli import main

sys.exit(main())
