"""The workspace on disk: the workspace value and its setup, generations (CAS ref transactions),
changeset records, durable files, key files, SBOMs, test reports, and git plumbing.

The bottom layer: imports only errors and config.
"""
