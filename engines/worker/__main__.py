"""`python -m diffdeck.engines.worker --model JSON`: one model's worker process."""

import sys

from diffdeck.engines.worker.main import main

sys.exit(main())
