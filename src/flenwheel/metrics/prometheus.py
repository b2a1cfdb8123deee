"""The metrics for Prometheus: a collector that reads the store at scrape time.

Why a collector and not in-process counters: requests are run by many processes — API servers, `flenwheel
worker`s on other hosts, CLI commands — and a counter kept in one process's memory would show only what that
process ran, restart from zero with it, and disagree between two API replicas. The store is the one place
every process records into, so each scrape reads it: every replica answers the same figures, they survive
restarts, and counters only grow because the rows they count are never rewritten into the past. The cost is
one read of the history per scrape (no time window: Prometheus counters are cumulative); use a scrape
interval of 30 s or more on a large history.

Metric names follow Prometheus' conventions (base units, `_total` counters, `_seconds` histograms).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from flenwheel.metrics.figures import SLAS, error_kind
from flenwheel.metrics.records import Request, load_requests

if TYPE_CHECKING:
    from flenwheel.store.database import Database

# Seconds. Every SLA target of seed 003 (10, 15, 20, 30, 60 s) is a bucket edge, so the share of requests
# within an SLA is exact (`…_bucket{le="30"} / …_count`), not interpolated.
BUCKETS: tuple[float, ...] = tuple(
    sorted(
        {0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0}
        | {s.target_s for s in SLAS}
    )
)


def _bucket_counts(values: Sequence[float]) -> list[tuple[str, float]]:
    counts = [(_le(edge), float(sum(v <= edge for v in values))) for edge in BUCKETS]
    return [*counts, ("+Inf", float(len(values)))]


def _le(edge: float) -> str:
    return str(float(edge))


class StoreCollector:
    """A prometheus_client collector over a project's database (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> list[Any]:
        return []  # metrics are known only once the store is read; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        with self.db.session() as session:
            requests = load_requests(session)
        yield from families(requests)


def families(requests: Iterable[Request]) -> Iterator[Any]:
    """The metric families of these requests."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    requests = list(requests)
    labels = ["area", "engine", "model"]
    key: tuple[str, ...]
    durations: dict[tuple[str, ...], list[float]] = defaultdict(list)
    firsts: dict[tuple[str, ...], list[float]] = defaultdict(list)
    statuses: Counter[tuple[str, ...]] = Counter()
    failures: Counter[tuple[str, ...]] = Counter()
    cost: dict[tuple[str, ...], float] = defaultdict(float)
    images: Counter[tuple[str, ...]] = Counter()
    open_requests: Counter[tuple[str, ...]] = Counter()
    for request in requests:
        key = (request.area.value, request.engine, request.model)
        if (seconds := request.time_to_all_s) is not None:
            durations[key].append(seconds)
        if (seconds := request.time_to_first_s) is not None:
            firsts[key].append(seconds)
        if request.status in ("queued", "running"):
            open_requests[(request.area.value, request.status)] += 1
        else:
            statuses[(*key, request.status)] += 1
        if request.status in ("failed", "interrupted"):
            failures[(request.area.value, request.engine, error_kind(request.error))] += 1
        cost[key] += request.cost_usd
        images[key] += request.images

    total = HistogramMetricFamily(
        "flenwheel_request_duration_seconds",
        "Time from submission to the end of each succeeded request (seed 003 time-to-all).",
        labels=labels,
    )
    for key, values in sorted(durations.items()):
        total.add_metric(list(key), _bucket_counts(values), sum_value=sum(values))
    yield total
    first = HistogramMetricFamily(
        "flenwheel_time_to_first_output_seconds",
        "Time from submission to the request's first stored image (seed 003 time-to-first).",
        labels=labels,
    )
    for key, values in sorted(firsts.items()):
        first.add_metric(list(key), _bucket_counts(values), sum_value=sum(values))
    yield first
    finished = CounterMetricFamily(
        "flenwheel_requests",
        "Finished requests by outcome (succeeded, failed, cancelled, interrupted).",
        labels=[*labels, "status"],
    )
    for key, count in sorted(statuses.items()):
        finished.add_metric(list(key), count)
    yield finished
    failed = CounterMetricFamily(
        "flenwheel_request_failures",
        "Failed requests by the kind of error (an engine's HTTP status, budget exceeded, timeout, ...).",
        labels=["area", "engine", "error_kind"],
    )
    for key, count in sorted(failures.items()):
        failed.add_metric(list(key), count)
    yield failed
    money = CounterMetricFamily(
        "flenwheel_cost_usd",
        "What the requests' engine calls billed (USD; held reservations included).",
        labels=labels,
    )
    for key, usd in sorted(cost.items()):
        money.add_metric(list(key), round(usd, 6))
    yield money
    made = CounterMetricFamily("flenwheel_images", "Images the requests stored.", labels=labels)
    for key, count in sorted(images.items()):
        made.add_metric(list(key), count)
    yield made
    waiting = GaugeMetricFamily(
        "flenwheel_requests_open", "Requests queued or running now.", labels=["area", "status"]
    )
    for key, count in sorted(open_requests.items()):
        waiting.add_metric(list(key), count)
    yield waiting


def exposition(db: Database) -> tuple[bytes, str]:
    """The Prometheus text exposition of the store's metrics, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(db))
    return generate_latest(registry), CONTENT_TYPE_LATEST
