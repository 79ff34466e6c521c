import sys

from attnsuite.cli import main

sys.exit(main())
