"""Executors: where independent jobs (an eval's task trials, a step's candidates) run.

``base`` holds the contract (submit a typed job, get a future of its typed result);
``local`` runs jobs in this process, bounded by the cores and by the memory each job's
sandbox may take; ``ray_executor`` runs them as tasks on a Ray cluster; ``factory`` picks the
one ``[scale]`` in converge.toml names (``executor_for``). Imports config, errors and store only.
"""
