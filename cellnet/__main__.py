"""`python -m cellnet ...` is the `cellnet` command."""

from __future__ import annotations

import sys

from cellnet.cli import main

sys.exit(main())
