"""Converge refining itself: the checks of a self changeset (``checks``: its own suite in a
sandbox), the canary run (``canary``: drives the loop on a sample), and installations (``install``).

``checks`` sits below the gate (the gate calls it); only ``canary`` imports the loop.
"""
