"""Start/stop the gRPC server and the Prometheus endpoint of a service from a Config."""

from __future__ import annotations

from dataclasses import dataclass

from dbmazz.api.prometheus import MetricsServer
from dbmazz.api.server import GrpcServer
from dbmazz.config import Config
from dbmazz.engine.service import EngineService


@dataclass
class ControlPlane:
    grpc: GrpcServer | None = None
    metrics: MetricsServer | None = None

    def stop(self, grace: float = 2.0) -> None:
        if self.grpc is not None:
            self.grpc.stop(grace)
        if self.metrics is not None:
            self.metrics.stop()


def start_control_plane(service: EngineService, config: Config) -> ControlPlane:
    """GRPC_PORT=0 / METRICS_PORT=0 leave the respective server off."""
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
