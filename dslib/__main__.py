import sys

from dslib.cli import main

sys.exit(main())
