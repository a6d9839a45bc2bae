"""`python -m sendreturn_mood`: the command line (`sendreturn_mood.cli.main`)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
