"""Model backends (llama.cpp in-process, OpenAI-compatible servers, replay), the GGUF registry,
residency under memory budgets, constrained sampling and validated JSON output.

Imports store, config and errors only: never sandbox, gate, agents or the loop.
"""
