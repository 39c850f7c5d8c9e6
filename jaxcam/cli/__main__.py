"""`python -m jaxcam.cli ...` runs the `jaxcam` command."""

from jaxcam.cli import run

run()
