"""TLS record benchmark: what decrypting the walsender's TLS records costs a reader, per
record, in this process — the floor under a TLS source's CPU per change.

The walsender writes each message it decodes as it goes (``pq_flush_if_writable``), so over
TLS a reader that keeps up gets one TLS record per message; OpenSSL's ``SSL_read`` hands out
one record per call. dbmazz's own TLS connection (``source/tlswire.py``) already reads the
socket megabytes at a time and decrypts in a tight loop over memory BIOs; what is left is
one ``SSLObject.read`` per record. This measures that loop alone: a TLS 1.3 session between
two ``SSLObject``s over memory BIOs (the cipher PostgreSQL and OpenSSL settle on,
TLS_AES_256_GCM_SHA384 here), ``--records`` records of ``--payload`` bytes each (a pgoutput
Insert of bench/e2e.py's table, with its CopyData and XLogData headers) and, for contrast, of
16 KiB each (what the same bytes cost when coalesced into full records). Reported: CPU µs per
record and per KiB, and the floor per change, ``--records-per-change`` × µs per record
(default: bench/e2e.py's workload, 1 M inserts and 100 k one-row transactions = 1.3 M
messages for 1.1 M changes).

Usage: ``python bench/tls_records.py [--records 200000] [--payload 180] [--repeat 5]
[--records-per-change 1.1818]``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dbmazz.testing.postgres import make_tls_files

FULL_RECORD = 16 << 10


def session(cert: Path, key: Path) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.SSLObject,
                                             ssl.MemoryBIO]:
    """A handshaken TLS pair over memory BIOs: (server, its outgoing BIO, client, the
    client's incoming BIO)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        if c_out.pending:
            s_in.write(c_out.read())
        if s_out.pending:
            c_in.write(s_out.read())
    client.do_handshake()  # raises if the handshake did not finish
    return server, s_out, client, c_in


def decrypt_cpu_s(cert: Path, key: Path, records: int, payload: int) -> tuple[float, str]:
    """CPU seconds to decrypt ``records`` records of ``payload`` bytes with the TlsWire
    loop (``SSLObject.read`` into a buffer until it wants more), and the cipher."""
    server, server_out, client, client_in = session(cert, key)
    message = bytes(payload)
    for _ in range(records):
        server.write(message)  # one record per write
    client_in.write(server_out.read())
    buffer = bytearray(4 << 20)
    view = memoryview(buffer)
    size = len(buffer)
    # typeshed types read() as returning bytes; with a buffer it returns the count.
    read: Callable[[int, memoryview], int] = client.read  # type: ignore[assignment]
    got = total = 0
    started = time.process_time()
    try:
        while True:
            n = read(size - got, view[got:])
            got += n
            total += n
            if got > size - FULL_RECORD:
                got = 0
    except ssl.SSLWantReadError:
        pass
    spent = time.process_time() - started
    if total != records * payload:
        raise RuntimeError(f"decrypted {total} bytes, expected {records * payload}")
    cipher = client.cipher()
    return spent, cipher[0] if cipher else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--payload", type=int, default=180,
                        help="bytes per small record (one pgoutput message with its headers)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--records-per-change", type=float, default=1_300_000 / 1_100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = make_tls_files(Path(tmp))
        small, full = [], []
        full_records = max(1, args.records * args.payload // FULL_RECORD)
        cipher = ""
        for _ in range(args.repeat):  # interleaved, best kept
            spent, cipher = decrypt_cpu_s(files.cert_file, files.key_file, args.records,
                                          args.payload)
            small.append(spent / args.records)
            spent, _ = decrypt_cpu_s(files.cert_file, files.key_file, full_records,
                                     FULL_RECORD)
            full.append(spent / full_records)
    per_record = min(small)
    per_full = min(full)
    report = {
        "cipher": cipher,
        "openssl": ssl.OPENSSL_VERSION,
        "records": args.records,
        "payload": args.payload,
        "repeat": args.repeat,
        "us_per_record": round(per_record * 1e6, 3),
        "us_per_kib_small_records": round(per_record * 1e6 * 1024 / args.payload, 3),
        "us_per_full_record": round(per_full * 1e6, 3),
        "us_per_kib_full_records": round(per_full * 1e6 * 1024 / FULL_RECORD, 3),
        "records_per_change": round(args.records_per_change, 4),
        "floor_us_per_change": round(per_record * 1e6 * args.records_per_change, 3),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
