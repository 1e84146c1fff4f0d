"""Bearer-token check for the gRPC server (``GRPC_TOKEN``).

Health checks stay open: probes (Kubernetes, load balancers) cannot send credentials, and
health reveals nothing beyond SERVING / NOT_SERVING. The token is compared in constant
time and never logged; a rejected call is logged with its method only.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs: dict[str, Callable[..., Any]] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


class TokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("empty token")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        supplied = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                supplied = value if isinstance(value, str) else value.decode(errors="replace")
        if hmac.compare_digest(supplied.encode(), self._expected):
            return handler
        reason = "missing" if not supplied else "invalid"
        log.warning("rejected %s: %s bearer token", method, reason)
        return _deny(handler, f"{reason} bearer token: send metadata 'authorization: Bearer "
                              "<GRPC_TOKEN>' (dbmazz CLI: --token or GRPC_TOKEN)")
