import sys

from tokenfill.cli import main

sys.exit(main())
