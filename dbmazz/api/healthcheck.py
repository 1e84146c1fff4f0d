"""``python -m dbmazz.api.healthcheck``: exit 0 when the engine's gRPC health is SERVING.

For container health checks (the Dockerfile's ``HEALTHCHECK``) and scripts. It asks the
standard ``grpc.health.v1.Health/Check`` of the engine at ``--address`` (default
``GRPC_HOST:GRPC_PORT``, ``127.0.0.1:50051``; a wildcard ``GRPC_HOST`` such as ``0.0.0.0``
is asked on 127.0.0.1), and prints one line:

* ``SERVING`` → exit 0;
* ``NOT_SERVING: <the engine's error and its fix>`` (a failed engine, or setup still
  running) → exit 1;
* ``UNREACHABLE: …`` (no engine listening, timeout) → exit 2.

Health needs no token even when ``GRPC_TOKEN`` is set. With TLS (``GRPC_TLS_CERT``) pass
``--ca-cert`` (default: ``GRPC_TLS_CERT`` itself, right for a self-signed certificate).
Only grpcio is imported, so a check costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

#: Trailing metadata key carrying the error text (see dbmazz.api.server).
ERROR_METADATA_KEY = "dbmazz-error-bin"
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def default_address(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    host = env.get("GRPC_HOST", "127.0.0.1").strip()
    if host in _WILDCARDS:
        host = "127.0.0.1"
    port = env.get("GRPC_PORT", "50051").strip() or "50051"
    return f"{host}:{port}"


def check(address: str, *, timeout_s: float = 5.0, ca_cert: str | None = None,
          service: str = "") -> tuple[int, str]:
    """(exit code, line to print) for the engine at ``address``."""
    if ca_cert:
        with open(ca_cert, "rb") as f:
            channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        response, call = stub.Check.with_call(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return 2, f"UNREACHABLE: {address}: {code.name if code else 'error'}: {details}"
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status == health_pb2.HealthCheckResponse.SERVING:
        return 0, status
    error = ""
    for key, value in call.trailing_metadata() or ():
        if key == ERROR_METADATA_KEY:
            error = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return 1, f"{status}: {error}" if error else status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dbmazz.api.healthcheck",
        description="Exit 0 when the dbmazz engine reports SERVING on gRPC health.")
    parser.add_argument("--address", default=None,
                        help="engine gRPC address (default GRPC_HOST:GRPC_PORT)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    parser.add_argument("--ca-cert", default=None,
                        help="CA certificate (PEM) of a TLS engine (default GRPC_TLS_CERT)")
    args = parser.parse_args(argv)
    ca_cert = args.ca_cert or os.environ.get("GRPC_TLS_CERT") or None
    code, line = check(args.address or default_address(), timeout_s=args.timeout,
                       ca_cert=ca_cert)
    print(line, file=sys.stdout if code == 0 else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
