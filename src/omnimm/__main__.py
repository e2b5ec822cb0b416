"""`python -m omnimm` runs the command line."""

from omnimm.cli import main

main()
