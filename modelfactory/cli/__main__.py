"""`python -m modelfactory.cli`: the same as `mf`."""

from . import main

main()
