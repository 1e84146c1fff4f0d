"""Streamed-transaction spool benchmark: CPU per message to hold a transaction until its
Stream Commit and deliver it as ordinary chunks (``source/spool.py``), in one process.

A run of ``--messages`` in-stream Insert messages (xid, relation, a 110-byte tuple) is
appended to a :class:`~dbmazz.source.spool.Spool` in runs of 1,000 (as the socket reader
hands them: a copy of the read, each message behind its 30-byte frame headers, ``ends``
given), past its memory limit (``--memory-mib``, the rest spilled to a
temporary file), then delivered and consumed, three times in a row in each of ``--repeat``
child processes; the best is kept. With ``--baseline DIR`` (a checkout of other code) that
tree's children interleave with this one's. The last line printed is one JSON object:

    {"messages": N, "us_per_message": X, "us_per_message_base": Y, ...}

Usage: ``python bench/spool.py [--messages 2000000] [--memory-mib 16] [--repeat 5]
[--baseline DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_MESSAGES = 1_000


def measure(messages: int, memory_mib: int) -> float:
    """CPU seconds (this process) to spool and deliver ``messages`` messages, the best of
    three in a row."""
    import struct

    import numpy as np

    from dbmazz.source.chunk import WalChunk
    from dbmazz.source.spool import Spool

    xid = 100
    insert = b"I" + struct.pack(">II", xid, 16384) + b"N" + bytes(110)
    framed = 30 + len(insert)  # the CopyData and XLogData headers before each message
    data = np.frombuffer((bytes(30) + insert) * RUN_MESSAGES, dtype=np.uint8)
    ends = np.arange(1, RUN_MESSAGES + 1, dtype=np.int64) * framed
    starts = ends - len(insert)
    run = WalChunk(data=data, offsets=np.append(starts, ends[-1]),
                   lsns=np.arange(RUN_MESSAGES, dtype=np.uint64), ends=ends)
    begin = WalChunk.from_messages([b"B" + bytes(20)])
    commit = WalChunk.from_messages([b"C" + bytes(25)])
    runs = max(1, messages // RUN_MESSAGES)
    best = float("inf")
    for _ in range(3):  # the first one pays for touching fresh memory
        started = time.process_time()
        spool = Spool(xid, memory_mib << 20, None)
        for _ in range(runs):
            # The reader's own copy of each read, which the spool may rewrite.
            spool.append_run(WalChunk(data=run.data.copy(), offsets=run.offsets,
                                      lsns=run.lsns, ends=run.ends))
        delivered = sum(len(chunk) for chunk in spool.deliver(begin, commit))
        assert delivered == runs * RUN_MESSAGES + 2, delivered
        best = min(best, time.process_time() - started)
    return best


def child(root: Path, messages: int, memory_mib: int) -> float:
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); "
            f"sys.path.insert(1, {str(ROOT / 'bench')!r}); import spool; "
            f"print(spool.measure({messages}, {memory_mib}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=root)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2_000_000)
    parser.add_argument("--memory-mib", type=int, default=16,
                        help="the spool's memory limit (a quarter of MAX_INFLIGHT_BYTES)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="a checkout of other code to compare")
    args = parser.parse_args()
    trees = [("", ROOT)] + ([("_base", args.baseline.resolve())] if args.baseline else [])
    best: dict[str, float] = {}
    for round_ in range(args.repeat):
        for suffix, root in trees:  # interleaved: both trees under the same conditions
            seconds = child(root, args.messages, args.memory_mib)
            best[suffix] = min(best.get(suffix, seconds), seconds)
            print(f"round {round_ + 1}: spool{suffix} {seconds * 1e6 / args.messages:.3f} "
                  "us/message", file=sys.stderr)
    result: dict[str, object] = {"messages": args.messages, "memory_mib": args.memory_mib,
                                 "repeat": args.repeat}
    for suffix, _ in trees:
        result[f"us_per_message{suffix}"] = round(best[suffix] * 1e6 / args.messages, 3)
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
