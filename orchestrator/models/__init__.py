"""Model backends (llama.cpp in-process, OpenAI-compatible servers and pools of them, replay), the GGUF
registry, residency under RAM and VRAM budgets (layer placement, threads, KV cache types, NUMA, mlock),
the prompt cache, context windows, constrained sampling and validated JSON output.

Imports store, config and errors only: never sandbox, gate, agents or the loop.
"""
