"""Prometheus metrics: HTTP requests, latency and tokens per worker, model-process gauges at scrape time.

gunicorn runs several workers, so when PROMETHEUS_MULTIPROC_DIR is set (the launcher sets it)
counters go to prometheus_client's shared files and a scrape aggregates every worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from berth_server.protocols.tgi.errors import TGI_ERRORS
from berth_server.replicas import ready_replicas


def ready_indices(status: dict[str, Any]) -> list[int]:
    """The replicas of a model that can answer a scrape (replica 0 for a status that lists none)."""
    return [int(r["index"]) for r in ready_replicas(status)]

log = logging.getLogger(__name__)


class ModelProcessCollector(Collector):
    """Asks every ready model process for its counters when /metrics is scraped."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield queue depth, running batch size, aborted and finished totals, sessions and prefix-cache counters per
        model uid and replica."""
        labels = ["model", "replica"]
        running = GaugeMetricFamily("berth_model_running_requests", "Requests in the running batch", labels=labels)
        waiting = GaugeMetricFamily("berth_model_queue_depth", "Requests waiting for a batch slot", labels=labels)
        aborted = GaugeMetricFamily("berth_model_aborted_requests", "Requests aborted (cumulative)", labels=labels)
        finished = GaugeMetricFamily("berth_model_finished_requests", "Requests that ran to their end (cumulative)",
                                     labels=labels)
        sessions = GaugeMetricFamily("berth_model_open_sessions", "SageMaker stateful sessions open", labels=labels)
        pinned = GaugeMetricFamily("berth_model_pinned_sessions", "Sessions whose prefix the engine keeps (llama.cpp: "
                                   "a slot each)", labels=labels)
        queries = GaugeMetricFamily("berth_model_prefix_cache_queries", "Prompt tokens looked up in the prefix "
                                    "cache (cumulative)", labels=labels)
        hits = GaugeMetricFamily("berth_model_prefix_cache_hits", "Prompt tokens found in the prefix cache "
                                 "(cumulative)", labels=labels)
        try:
            statuses = self.gateway.statuses()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the launcher is busy
            statuses = {}
        for uid, status in statuses.items():
            if status.get("state") != "ready":
                continue
            for index in ready_indices(status):
                try:
                    stats = self.gateway.stats(uid, replica=index)
                except Exception as exc:  # noqa: BLE001 - a busy or restarting model just misses this scrape
                    log.debug("no stats from model %s replica %d: %s", uid, index, exc)
                    continue
                series = [uid, str(index)]
                running.add_metric(series, stats.running)
                waiting.add_metric(series, stats.waiting)
                aborted.add_metric(series, stats.aborted_total)
                finished.add_metric(series, stats.finished_total)
                sessions.add_metric(series, stats.open_sessions)
                pinned.add_metric(series, stats.pinned_sessions)
                if stats.prefix_cache_queries_total is not None:  # engines that count their prefix cache
                    queries.add_metric(series, stats.prefix_cache_queries_total)
                    hits.add_metric(series, stats.prefix_cache_hits_total or 0)
        yield from (running, waiting, aborted, finished, sessions, pinned, queries, hits)


class FrontendMetrics:
    """This app's metric objects (one registry per app, so tests can build many apps)."""

    def __init__(self, gateway: Any, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.gateway = gateway
        # Settings.prometheus_multiproc_dir: the switch prometheus_client itself follows at import.
        self.multiprocess = bool(multiprocess_dir)
        self.requests = Counter("berth_http_requests", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("berth_http_request_duration_seconds", "Time to the response headers",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.generated_tokens = Counter("berth_generated_tokens", "Tokens generated", ["model"],
                                        registry=self.registry)
        self.prompt_tokens = Counter("berth_prompt_tokens", "Prompt tokens processed", ["model"],
                                     registry=self.registry)

    def count_tokens(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Record the tokens of one finished generation."""
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generated_tokens.labels(model).inc(completion_tokens)

    def exposition(self) -> bytes:
        """The text a scrape returns: all workers' counters (multiprocess) plus model gauges."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        text = generate_latest(registry)
        gauges = CollectorRegistry()
        gauges.register(ModelProcessCollector(self.gateway))
        return text + generate_latest(gauges)


def _before() -> None:
    g.berth_started = time.monotonic()


def _after(response: Response) -> Response:
    metrics: FrontendMetrics = current_app.extensions["berth"].metrics
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.requests.labels(route, request.method, str(response.status_code)).inc()
    started = g.get("berth_started")
    if started is not None:
        metrics.latency.labels(route).observe(time.monotonic() - started)
    return response


def metrics_blueprint() -> Blueprint:
    """The core blueprint: GET /metrics."""
    bp = Blueprint("berth_core", __name__)
    bp.berth_errors = TGI_ERRORS  # type: ignore[attr-defined]

    @bp.get("/metrics")
    def metrics() -> Response:
        body = current_app.extensions["berth"].metrics.exposition()
        return Response(body, mimetype=CONTENT_TYPE_LATEST)

    return bp


def install_metrics(app: Flask) -> None:
    """Count every request and register /metrics."""
    app.before_request(_before)
    app.after_request(_after)
    app.register_blueprint(metrics_blueprint())
