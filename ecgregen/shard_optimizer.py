"""Optimize a copy of an embedded store's shard in a child process.

``python -m ecgregen.shard_optimizer PARENT_PID SHARD_DIR``: the parent's pid ties the child's life to it.

Qdrant Edge holds the GIL for the whole of ``optimize()`` (minutes on a large corpus), which would freeze the
server's event loop; in a child process it freezes nothing. :meth:`ecgregen.store.EdgeStore.optimize` copies the
live shard, runs this on the copy and swaps the result in.

It lives outside ``ecgregen.store`` so that the child imports only Qdrant Edge: importing the store package loads
qdrant-client as well (1.5 s). The copy is a plain directory, not a store: no ``store.lock`` to take, and the live
store's lock stays with the server. Prints ``{"optimized": true|false}``; exits non-zero with the error on stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

import qdrant_edge as qe

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Be killed when the server dies (Linux), rather than optimize on for minutes into a directory that the next
    open of the store deletes."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        sys.exit(1)


def optimize(shard_dir: str) -> bool:
    """Build HNSW and merge segments in the shard at ``shard_dir``; durable when this returns."""
    shard = qe.EdgeShard.load(shard_dir)
    try:
        changed = shard.optimize()
        shard.flush()
    finally:
        shard.close()
    return changed


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m ecgregen.shard_optimizer PARENT_PID SHARD_DIR", file=sys.stderr)
        return 2
    _die_with_parent(int(argv[0]))
    print(json.dumps({"optimized": optimize(argv[1])}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
