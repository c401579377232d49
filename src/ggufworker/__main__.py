import sys

from ggufworker.cli import main

sys.exit(main())
