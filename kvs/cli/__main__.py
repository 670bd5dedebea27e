"""`python -m kvs.cli`, the same as `kvs` (and `python -m kvs`)."""

import sys

from kvs.cli import main

sys.exit(main())
