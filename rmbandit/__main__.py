import sys

from rmbandit.cli import main

sys.exit(main())
