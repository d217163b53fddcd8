"""A real OTLP receiver for tests: a plaintext gRPC server on a free port running one of the official
opentelemetry-proto collector services (TraceService, MetricsService) with the test's servicer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc


@contextlib.contextmanager
def otlp_receiver(add_servicer: Callable[[Any, grpc.Server], None], servicer: Any,
                  workers: int = 4) -> Iterator[str]:
    """Serves ``servicer`` (``add_servicer``: e.g. ``add_TraceServiceServicer_to_server``) and yields the
    endpoint for ``otlp_endpoint`` (``http://``: plaintext); stopped on exit."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    add_servicer(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(0)
