"""Executors: where independent jobs (an eval's task trials) run.

``base`` holds the contract (submit a typed job, get a future of its typed result);
``local`` runs jobs in this process, bounded by the cores and by the memory each job's
sandbox may take. A Ray executor will sit beside it behind the same contract. Imports
config, errors and store only.
"""
