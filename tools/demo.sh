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
if $CONVERGE --help | grep -q ' refine '; then
  $CONVERGE refine sample --goal "Remove unused imports and add type hints" --max-steps 1 --auto-approve || true
fi
$CONVERGE generation list sample
