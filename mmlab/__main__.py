"""`python -m mmlab ...` is the `mmlab` command."""

import sys

from mmlab.cli import main

sys.exit(main())
