"""Start/stop the gRPC server and the Prometheus endpoint of a service from a Config."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dbmazz.api.prometheus import MetricsServer
from dbmazz.api.server import GrpcServer
from dbmazz.config import Config
from dbmazz.engine.service import EngineService
from dbmazz.errors import ConfigError


@dataclass
class ControlPlane:
    grpc: GrpcServer | None = None
    metrics: MetricsServer | None = None

    def stop(self, grace: float = 2.0) -> None:
        if self.grpc is not None:
            self.grpc.stop(grace)
        if self.metrics is not None:
            self.metrics.stop()


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or wildcard: reachable from elsewhere


def check_exposure(config: Config) -> None:
    """A control plane reachable from other machines needs a bearer token and TLS: it can
    pause, stop and drop the slot, and its token must not cross the network in clear."""
    if not config.grpc_port or is_loopback(config.grpc_host) or config.grpc_allow_insecure:
        return
    missing = []
    if config.grpc_token is None or not config.grpc_token.get_secret_value():
        missing.append("GRPC_TOKEN")
    if not (config.grpc_tls_cert and config.grpc_tls_key):
        missing.append("GRPC_TLS_CERT and GRPC_TLS_KEY")
    if missing:
        raise ConfigError([
            f"GRPC_HOST: {config.grpc_host} exposes the gRPC control plane beyond this "
            f"machine; set {' and '.join(missing)} (a bearer token and TLS), or keep "
            "GRPC_HOST=127.0.0.1 (GRPC_ALLOW_INSECURE=true accepts the risk, e.g. in a "
            "container whose port is published only where it is safe)"])


def start_control_plane(service: EngineService, config: Config) -> ControlPlane:
    """GRPC_PORT=0 / METRICS_PORT=0 leave the respective server off."""
    check_exposure(config)
    plane = ControlPlane()
    try:
        if config.grpc_port:
            token = config.grpc_token.get_secret_value() if config.grpc_token else None
            plane.grpc = GrpcServer(service, host=config.grpc_host, port=config.grpc_port,
                                    token=token, tls_cert=config.grpc_tls_cert,
                                    tls_key=config.grpc_tls_key)
            plane.grpc.start()
        if config.metrics_port:
            plane.metrics = MetricsServer(service, host=config.grpc_host,
                                          port=config.metrics_port)
            plane.metrics.start()
    except BaseException:
        plane.stop(grace=0)
        raise
    return plane
