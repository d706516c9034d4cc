"""The MCP server: Converge's gate offered to other agents (Claude Code, Codex CLI, Goose...) over stdio.

Tools read repos, generations, files and repo maps, send a patch through the full gate, start a
refinement run and follow it, and run a command in a sandbox; resources show the pending
changesets and each repo's current generation. Nothing here approves, changes policy or rolls
back. A top layer beside cli and serve: imports loop (run records), gate, agents, sandbox and store.
"""
