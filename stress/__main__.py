import sys

from stress.cli import main

sys.exit(main())
