"""Prometheus metrics for every service (``GET /metrics``), with prometheus-client.

Each service has one :class:`ServiceMetrics`: its own registry (never the
global one: several services share a process in ``vstack-node all`` and in
tests). Two kinds of figures:

* **HTTP**, recorded by the router (:func:`nodes.net.routing.build_router`)
  for every routed request: ``vstack_http_requests_total{method, route,
  status}``, ``vstack_http_request_duration_seconds{method, route}``, and
  bytes in and out per route. ``route`` is the route's *pattern*
  (``/chunk/{chunk_id}``), never the raw path, and unknown paths are not
  recorded: a scanner cannot grow the label set.
* **The service's own state**, read at scrape time by the collectors it adds
  (:meth:`ServiceMetrics.collect_with`): chunk counts, Paxos rounds, the
  upload queue, the client's buffer... Nothing is counted twice, and the
  domain code knows nothing of Prometheus. Where a figure is a distribution
  (fsync latency, group-commit size), the service records it in a histogram
  made here (:meth:`ServiceMetrics.histogram`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol.http import FileRange, Response

__all__ = ["CounterMetricFamily", "GaugeMetricFamily", "Metric", "ServiceMetrics",
           "metrics_response"]

log = logging.getLogger("vstack.metrics")

#: Request latencies: from a cache hit (sub-millisecond) to a slow upload.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0, 30.0)


class _Scrape(Collector):
    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self.fn = fn

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self.fn())
        except Exception:  # a broken figure must not take the others down
            log.exception("a metrics collector failed")
            return []


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("vstack_http_requests", "HTTP requests answered, by route "
                                "pattern and status", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("vstack_http_request_duration_seconds", "Time to answer "
                                 "(the body of a file sent by sendfile not included)",
                                 ["method", "route"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.bytes_in = Counter("vstack_http_received_bytes", "Request body bytes declared",
                                ["route"], registry=self.registry)
        self.bytes_out = Counter("vstack_http_sent_bytes", "Answer body bytes (streamed "
                                 "answers not included)", ["route"], registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float,
                received: int, response: Response | None) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if received:
            self.bytes_in.labels(route).inc(received)
        if response is not None:
            body = response.body
            size = body.length if isinstance(body, FileRange) else len(body)
            if size:
                self.bytes_out.labels(route).inc(size)

    def histogram(self, name: str, doc: str, buckets: Sequence[float],
                  labels: Sequence[str] = ()) -> Histogram:
        return Histogram(name, doc, list(labels), buckets=buckets, registry=self.registry)

    def collect_with(self, fn: Callable[[], Iterable[Metric]]) -> None:
        """Add figures read at each scrape (``fn`` yields metric families)."""
        self.registry.register(_Scrape(fn))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def metrics_response(metrics: ServiceMetrics) -> Response:
    return Response(status=200, headers=[("Content-Type", CONTENT_TYPE_LATEST),
                                         ("Cache-Control", "no-cache")],
                    body=metrics.exposition())


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None
          ) -> GaugeMetricFamily:
    """One gauge (with one sample, labelled or not)."""
    if not labels:
        return GaugeMetricFamily(name, doc, value=value)
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


__all__ += ["counter", "gauge"]
