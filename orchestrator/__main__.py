"""`python -m orchestrator` runs the `converge` command."""

from orchestrator.cli import main

if __name__ == "__main__":  # not when a spawned worker process imports it (repo map parsing)
    main()
