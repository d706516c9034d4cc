"""Evaluation: how often a model and agent setup refines code, measured on task suites with hidden checks.

Owns ``suite`` (the on-disk task contract), ``store`` (eval records under ``cache/eval/``),
``stats`` (solve rates, Wilson intervals, comparisons), ``sandbox_check`` (the hidden check
in a fresh sandbox), ``throwaway`` (a task's own workspace), ``wiring`` (models per role,
metered), ``classify`` (failure classes), ``drive`` (the one door into the loop) and
``runner`` (tasks and evals). Imports loop, gate, agents, scale, sandbox, models, store.
"""
