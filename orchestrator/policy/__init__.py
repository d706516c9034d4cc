"""The policy: verdict types (``verdict``), the policy file (``model``), the rules and the engine
that applies them, content scanners, and the change as the policy sees it (built by git).

Imports store, config and errors; never models or agents: no model can talk past it.
"""
