"""`python -m orchestrator` runs the `converge` command."""

from orchestrator.cli import main

main()
