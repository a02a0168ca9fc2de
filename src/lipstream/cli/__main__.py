"""`python -m lipstream.cli ...`, as the `lipstream` script (the benchmarks and HAProxy's cluster start servers so)."""

import sys

from . import main

sys.exit(main())
