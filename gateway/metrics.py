"""Prometheus metrics of one gateway (a registry per app, so tests can build several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "facerec_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "facerec_http_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "facerec_inference_batch_images",
            "Images per micro-batched pipeline call",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.errors = Counter(
            "facerec_errors",
            "Error responses by code",
            ["code"],
            registry=self.registry,
        )
