import sys

from diffdeck.tui.cli.main import main

sys.exit(main())
