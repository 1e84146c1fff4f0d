"""``python -m dbmazz`` and the ``dbmazz`` console script."""

import logging
import os
import sys

from dbmazz.cli import main


def entry() -> None:
    """Run the CLI, then leave without interpreter finalization.

    When a command returns, its work is durable (drained, checkpointed). Native thread pools
    (gRPC, DuckDB, polars) may still be winding down; finalizing Python under them can abort
    the process ("exception not rethrown"), turning a clean exit 0 into SIGABRT.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
