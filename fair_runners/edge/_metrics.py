"""CloudWatch metrics of the Lambda edge, in Powertools' embedded metric format (EMF) on stdout.

Per-turn latencies are collected from the run's progress events and written once per run, in documents of
100 values as Powertools writes them (`add_metric` per turn cost ~10 us a turn: it formats the pending
values on every call). Nothing is written when Powertools' metrics are disabled
(`POWERTOOLS_METRICS_DISABLED`, as the demo sets it), so a local run's output holds no EMF documents.
"""

from __future__ import annotations

import json
import sys

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from .._progress import PaceReport, ProgressEvent, TurnFinished
from .._schemas import RunTotals

metrics = Metrics(namespace="FairRunners", service="fair-runners")

# Values of one metric in one EMF document: CloudWatch's limit, and where Powertools starts a new document.
_EMF_MAX_VALUES = 100


def count(name: str, value: float = 1) -> None:
    """Add a count metric to this invocation's document (flushed by `metrics.log_metrics`)."""
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


class LatencyRecorder:
    """Keeps each turn's latency and the run's pace (a progress callback); publishes them once per run."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.peak_requests_per_minute = 0.0
        self.peak_tokens_per_minute = 0.0
        self.backing_off_reports = 0

    def __call__(self, event: ProgressEvent) -> None:
        if isinstance(event, TurnFinished) and event.record.latency_ms is not None:
            if not event.record.cached:
                self.latencies.append(event.record.latency_ms)
        elif isinstance(event, PaceReport):
            self.peak_requests_per_minute = max(self.peak_requests_per_minute, event.requests_per_minute)
            self.peak_tokens_per_minute = max(self.peak_tokens_per_minute, event.tokens_per_minute)
            self.backing_off_reports += event.backing_off

    def publish(self) -> None:
        """`TurnLatency`, every value, in EMF documents of 100 values; the pace the run reached."""
        if is_metrics_disabled():
            return
        if self.peak_requests_per_minute:
            count("PeakRequestsPerMinute", self.peak_requests_per_minute)
            count("PeakTokensPerMinute", self.peak_tokens_per_minute)
            count("BackingOffSeconds", self.backing_off_reports)  # pace reports come at most once a second
        for start in range(0, len(self.latencies), _EMF_MAX_VALUES):
            values = self.latencies[start : start + _EMF_MAX_VALUES]
            latency = {"Unit": MetricUnit.Milliseconds.value, "StorageResolution": 60, "Value": values}
            document = metrics.serialize_metric_set(metrics={"TurnLatency": latency})
            sys.stdout.write(json.dumps(document) + "\n")


def record_totals(totals: RunTotals) -> None:
    """The run's totals as count metrics."""
    count("TurnsOk", totals.successes)
    count("TurnsFailed", totals.failures)
    count("TurnsSkipped", totals.skipped)
    count("TurnRetries", totals.retries)
    count("InputTokens", totals.input_tokens)
    count("OutputTokens", totals.output_tokens)
    count("RateLimitedResponses", totals.rate_limited_responses)
    count("CacheHits", totals.cache_hits)
    metrics.add_metric(name="RunWallTime", unit=MetricUnit.Milliseconds, value=totals.wall_time_ms)
