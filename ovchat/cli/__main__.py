"""`python -m ovchat.cli`: the `ovchat` command."""

from . import main

main()
