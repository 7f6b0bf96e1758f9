"""`python -m tunery` runs the command-line interface."""

from tunery.cli.main import main

main()
