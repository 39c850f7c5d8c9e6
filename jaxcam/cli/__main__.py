"""`python -m jaxcam.cli ...` runs the `jaxcam` command."""

import sys

from jaxcam.cli import main

sys.exit(main())
