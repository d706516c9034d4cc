"""A repo map parse worker: pickled Python sources on stdin, their parses (pickled) on stdout.

Run as ``python -m orchestrator.agents.parseworker LIMIT`` by :func:`~orchestrator.agents.pyparse.parse_in_workers`.
"""

from __future__ import annotations

import gc
import pickle
import sys

from orchestrator.agents.pyparse import parse_bounded

if __name__ == "__main__":
    gc.disable()  # a short life making many small objects: collections would only slow it down
    sources = pickle.load(sys.stdin.buffer)
    sys.stdout.buffer.write(pickle.dumps([parse_bounded(data, int(sys.argv[1])) for data in sources]))
