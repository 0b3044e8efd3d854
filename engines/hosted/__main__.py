"""`python -m diffdeck.engines.hosted --model JSON`: one hosted model's worker process."""

import sys

from diffdeck.engines.hosted.main import main

sys.exit(main())
