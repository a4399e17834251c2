"""`python -m fair_runners.cli`."""

from . import main

main()
