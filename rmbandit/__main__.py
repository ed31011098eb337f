import sys

from rmbandit.cli import console_main

sys.exit(console_main())
