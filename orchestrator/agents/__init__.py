"""Agent cards and running them: prompt, model call, validated output; tool agents; the repo map.

A card (``agents/<name>.toml``) is data; ``run`` turns a card, a backend and inputs into a typed
answer (a plan, an edit proposal), grounded in the repo (``grounding``: what a model may name;
``findings``: what the tool agents would change; ``coding``: what the coder sees). Imports models,
sandbox (tool agents) and store; never the gate or the loop.
"""
