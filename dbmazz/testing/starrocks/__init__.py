"""A StarRocks emulator for tests and ``make demo`` — not a database, and not for production.

No StarRocks can be installed here, so dbmazz's StarRocks sink is tested against this
emulator, which reproduces a cluster's external behaviour as documented in
``docs/starrocks-protocol.md`` (see ``docs/emulator.md``):

- FE HTTP: Basic auth, the ``Expect: 100-continue`` check, 307 to the BEs (round robin),
  ``get_load_state``, and ``/api/transaction/*`` routed to the coordinator BE.
- BE HTTP: Stream Load (CSV and JSON, ``columns``, ``__op``, partial update,
  ``merge_condition``, strict mode, ``max_filter_ratio``, error logs) and the transaction
  interface, with header checks done before ``100 Continue``.
- Primary Key semantics on in-memory tables, labels with retention, and fault injection.
- MySQL protocol (mysql-mimic): DDL, SHOW, information_schema, asynchronous ALTER jobs and
  SELECT over the data (DuckDB).

Run it in-process (``with StarRocksEmulator() as sr: ...``, or the ``starrocks`` pytest
fixture) or standalone: ``python -m dbmazz.testing.starrocks --http-port 8030
--mysql-port 9030``.
"""

from dbmazz.testing.starrocks.requirements import require_emulator

require_emulator()  # a clear error, not a ModuleNotFoundError deep in the emulator

from dbmazz.testing.starrocks.clock import Clock, ManualClock, SystemClock  # noqa: E402
from dbmazz.testing.starrocks.core import EmulatorConfig  # noqa: E402
from dbmazz.testing.starrocks.emulator import StarRocksEmulator  # noqa: E402
from dbmazz.testing.starrocks.faults import Fault, FaultKind, Faults  # noqa: E402

__all__ = [
    "Clock",
    "EmulatorConfig",
    "Fault",
    "FaultKind",
    "Faults",
    "ManualClock",
    "StarRocksEmulator",
    "SystemClock",
]
