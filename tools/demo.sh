#!/usr/bin/env bash
# `make demo`: a workspace, the bundled sample repo registered, and a real refinement of it
# on the embedded default model. Idempotent: a second run reuses the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
WS="${1:-.demo-workspace}"
CONVERGE=".venv/bin/converge"
SRC="$WS.sources/sample-repo"

if [ ! -d "$SRC/.git" ]; then
  mkdir -p "$SRC"
  cp -r examples/sample-repo/. "$SRC/"
  git -C "$SRC" init -q -b main
  git -C "$SRC" add -A
  git -C "$SRC" -c user.name=Converge -c user.email=converge@localhost commit -q -m "sample repo"
fi

$CONVERGE init "$WS"
export CONVERGE_WORKSPACE="$WS"
if ! $CONVERGE repos --json | grep -q '"name": "sample"'; then
  $CONVERGE add "$SRC" --name sample
fi
# The goal in a user's words, naming no tool: the tool agents' dry runs find the unused imports and
# ground the plan in them, so even the tiny embedded model (SmolLM2-135M) plans a step that works.
# With a real coder model (see the README) ask for anything.
set +e
$CONVERGE refine sample --goal "There are leftover imports nobody uses in the inventory package; get rid of them" \
  --max-steps 1 --auto-approve
rc=$?
set -e
# 1 means the run ended and said no; 2+ is a real error. (A second demo finds nothing left to fix: the step
# says so and the run completes without a change.)
if [ "$rc" -ge 2 ]; then exit "$rc"; fi
$CONVERGE generation list sample
$CONVERGE changeset list --repo sample
latest=$($CONVERGE changeset list --repo sample --json | .venv/bin/python -c 'import json,sys; c=json.load(sys.stdin); print(c[0]["id"] if c else "")')
if [ -n "$latest" ]; then
  $CONVERGE changeset verify "$latest"
  echo
  echo "Review it:    CONVERGE_WORKSPACE=$WS $CONVERGE changeset show $latest"
  echo "Verify it:    CONVERGE_WORKSPACE=$WS $CONVERGE changeset verify $latest"
  echo "Roll it back: CONVERGE_WORKSPACE=$WS $CONVERGE rollback sample"
fi
echo
echo "Review in the browser (prints a URL with a session token; Ctrl-C stops it):"
echo "  CONVERGE_WORKSPACE=$WS $CONVERGE serve"
