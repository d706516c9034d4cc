"""The refinement loop: a LangGraph state graph (nodes and routing only), its typed state, run records.

Owns: ``graph`` (nodes call one function of the part that owns each stage), ``state`` (what the
checkpointer keeps), ``driver`` (start, resume, finish; the SQLite checkpointer), ``runs``
(records, logs, ADRs). Imports gate, agents, sandbox, models, store. Only the parts that drive
runs import it: cli, watch, selfhost's canary, evals, serve, mcp.
"""
