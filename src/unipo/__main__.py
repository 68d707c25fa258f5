import sys

from unipo.cli import main

sys.exit(main())
