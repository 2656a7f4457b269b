"""`python -m amemctl` is the `amemctl` command."""

from amemctl.cli import main

main()
