"""Prometheus metrics for one node (`GET /metrics`), with the `prometheus-client` library.

Each node has its own `CollectorRegistry` (never the library's global one), so two nodes in
one process -- tests, the simulator -- keep separate figures. Two kinds of metrics:

- HTTP requests, counted and timed as they are answered (`HttpMetrics`, fed by an ASGI
  middleware in kvs/api/metrics.py that also covers the raw fast path of kvs/api/keys.py,
  kept as plain numbers and exported at scrape time like the rest);
- everything else is read at scrape time from the counters the parts keep anyway (store,
  membership, sync, watch hub) by `NodeCollector`: nothing is added to their hot loops.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kvs.store import BATCH_SIZE_BUCKETS

if TYPE_CHECKING:
    from kvs.api.listener import HttpStats
    from kvs.api.view import NodeView
    from kvs.watch import WatchHub

# Latency buckets (seconds): a GET answers in ~100 µs, a fsync'd PUT in a few ms.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})


class HttpMetrics(Collector):
    """Requests by route template, method and status: a counter and a latency histogram.

    Kept as plain numbers and exported at scrape time: prometheus-client's own Counter and
    Histogram take a lock and walk the buckets on every update (measured ~5 µs a request,
    half the in-process cost of the single-key fast path); this is a dict lookup, a bisect
    and three additions. Everything runs on the node's one Trio thread."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, int], list[Any]] = {}  # [count, sum, buckets]
        # HTTP workers' own series (kvs/api/proxy.py reports them): the latest report of each
        # running worker, and what workers that since exited had counted (so sums never fall).
        self._workers: dict[int, tuple[int, list[list[Any]]]] = {}  # index: (pid, rows)
        self._retired: dict[tuple[str, str, int], list[Any]] = {}

    def rows(self) -> list[list[Any]]:
        """This process's series, as a worker reports them: [route, method, status, count,
        sum, buckets]."""
        return [[*key, count, total, list(b)] for key, (count, total, b) in self._series.items()]

    def absorb(self, index: int, pid: int, rows: list[list[Any]]) -> None:
        """A worker's report (cumulative). A new pid for an index: the old one exited, and
        what it counted is kept."""
        previous = self._workers.get(index)
        if previous is not None and previous[0] != pid:
            _add_rows(self._retired, previous[1])
        self._workers[index] = (pid, rows)

    def _totals(self) -> dict[tuple[str, str, int], list[Any]]:
        if not self._workers and not self._retired:
            return self._series
        totals: dict[tuple[str, str, int], list[Any]] = {}
        _add_rows(totals, self.rows())
        _add_rows(totals, [[*k, c, t, b] for k, (c, t, b) in self._retired.items()])
        for _, rows in self._workers.values():
            _add_rows(totals, rows)
        return totals

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"  # a label per made-up method would grow without bound
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
        series[0] += 1
        series[1] += seconds
        series[2][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        labels = ["route", "method", "status"]
        requests = CounterMetricFamily("kvs_http_requests", "HTTP requests answered", labels=labels)
        latency = HistogramMetricFamily(
            "kvs_http_request_duration_seconds",
            "Time to answer an HTTP request (for a watch stream: how long it lasted)",
            labels=labels,
        )
        for (route, method, status), (count, total, counts) in sorted(self._totals().items()):
            values = [
                route,
                method,
                str(status) if status else "none",  # no answer: the client went away
            ]
            requests.add_metric(values, count)
            buckets = []
            cumulative = 0
            for bound, n in zip(LATENCY_BUCKETS, counts, strict=False):
                cumulative += n
                buckets.append((str(bound), cumulative))
            buckets.append(("+Inf", count))
            latency.add_metric(values, buckets, sum_value=total)
        yield requests
        yield latency


def _add_rows(into: dict[tuple[str, str, int], list[Any]], rows: list[list[Any]]) -> None:
    for route, method, status, count, total, buckets in rows:
        series = into.get((route, method, status))
        if series is None:
            series = into[(route, method, status)] = [0, 0.0, [0] * (len(LATENCY_BUCKETS) + 1)]
        series[0] += count
        series[1] += total
        series[2] = [a + b for a, b in zip(series[2], buckets, strict=True)]


class NodeCollector(Collector):
    """Reads the node's own counters at scrape time."""

    def __init__(self, node: NodeView, hub: WatchHub, http: HttpStats) -> None:
        self.node = node
        self.hub = hub
        self.http = http

    def describe(self) -> list[Metric]:
        return []  # registered without a trial collect (the node may not be fully up yet)

    def collect(self) -> Iterator[Metric]:
        node = self.node
        info = InfoMetricFamily("kvs_node", "This node")
        info.add_metric([], {"node_id": node.node_id})
        yield info
        mode = GaugeMetricFamily("kvs_node_mode", "1 for the mode the node is in", labels=["mode"])
        for name in ("normal", "read-only", "syncing", "stale"):
            mode.add_metric([name], 1.0 if node.mode == name else 0.0)
        yield mode
        yield GaugeMetricFamily("kvs_uptime_seconds", "Seconds since start", node.uptime_s())
        auth = node.auth.counters
        yield CounterMetricFamily(
            "kvs_auth_failed", "Failed authentications (bad tokens)", auth["auth_failed"]
        )
        recoveries = CounterMetricFamily(
            "kvs_admin_recoveries",
            "Admin recovery requests (`kvs admin recover`)",
            labels=["outcome"],
        )
        recoveries.add_metric(["issued"], auth["admin_recoveries"])
        recoveries.add_metric(["refused"], auth["admin_recover_refused"])
        yield recoveries
        if node.store is not None:
            yield from self._store(node.store)
        yield GaugeMetricFamily("kvs_watchers", "Open watch streams", len(self.hub.watchers))
        yield CounterMetricFamily(
            "kvs_watch_events_sent", "Watch events sent to clients", self.hub.events_sent
        )
        yield CounterMetricFamily(
            "kvs_watch_disconnected_slow",
            "Watch streams cut off because the client fell too far behind",
            self.hub.disconnected_slow,
        )
        yield from self._http_front(self.http.counters())
        if node.cluster is not None:
            yield from self._membership(node.cluster.membership_stats())
            yield from self._sync(node.cluster.sync_stats())

    def _http_front(self, c: dict[str, int]) -> Iterator[Metric]:
        """What the HTTP listener refused or survived (kvs/api/server.py, kvs/api/front.py)."""
        yield GaugeMetricFamily(
            "kvs_http_connections_open", "Open HTTP connections", c["open_connections"]
        )
        yield CounterMetricFamily(
            "kvs_http_connections", "HTTP connections accepted", c["connections"]
        )
        refused = CounterMetricFamily(
            "kvs_http_refused",
            "HTTP requests or connections refused before the API, by reason",
            labels=["reason"],
        )
        for reason in (
            "header_timeouts",
            "body_timeouts",
            "http2_refused",
            "bad_requests",
            "body_budget_refusals",
        ):
            refused.add_metric([reason], c[reason])
        yield refused
        errors = CounterMetricFamily(
            "kvs_http_errors",
            "Unexpected errors contained at the HTTP boundary (the node went on), by where",
            labels=["where"],
        )
        errors.add_metric(["connection"], c["connection_errors"])
        errors.add_metric(["request"], c["app_errors"])
        errors.add_metric(["accept"], c["accept_errors"])
        yield errors

    def _store(self, store: Any) -> Iterator[Metric]:
        yield GaugeMetricFamily("kvs_keys", "Live keys (not tombstones)", store.count())
        yield GaugeMetricFamily(
            "kvs_tombstones", "Tombstones awaiting collection", store.tombstone_count()
        )
        info = store.info()
        yield GaugeMetricFamily(
            "kvs_store_size_bytes", "LMDB pages in use, in bytes", info["used_bytes"]
        )
        yield GaugeMetricFamily(
            "kvs_store_map_size_bytes", "LMDB map size (address space)", info["map_size"]
        )
        stats = store.stats
        yield CounterMetricFamily(
            "kvs_store_transactions", "LMDB write transactions committed", stats["transactions"]
        )
        yield CounterMetricFamily(
            "kvs_store_ops", "Write operations applied (puts, deletes, merges)", stats["ops"]
        )
        yield CounterMetricFamily("kvs_store_map_grows", "LMDB map growths", stats["map_grows"])
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(BATCH_SIZE_BUCKETS, store.batch_sizes, strict=False):
            cumulative += count
            buckets.append((str(float(bound)), cumulative))
        buckets.append(("+Inf", sum(store.batch_sizes)))
        hist = HistogramMetricFamily(
            "kvs_store_commit_batch_size", "Write operations per group commit (transaction)"
        )
        hist.add_metric([], buckets, sum_value=stats["ops"])
        yield hist

    def _membership(self, stats: dict[str, Any]) -> Iterator[Metric]:
        members = GaugeMetricFamily("kvs_members", "Members by state", labels=["state"])
        for state, count in sorted(stats["members"].items()):
            members.add_metric([state], count)
        yield members
        counters: dict[str, int] = stats["counters"]
        for name, what, unit in (
            ("kvs_gossip_messages", "Gossip datagrams", "datagrams"),
            ("kvs_gossip_bytes", "Gossip datagram bytes", "bytes"),
        ):
            family = CounterMetricFamily(name, what, labels=["direction"])
            family.add_metric(["in"], counters.get(f"{unit}_in", 0))
            family.add_metric(["out"], counters.get(f"{unit}_out", 0))
            yield family
        dropped = CounterMetricFamily(
            "kvs_gossip_dropped",
            'Gossip datagrams dropped, by reason ("auth": unauthenticated; "replay", "stale": replayed)',
            labels=["reason"],
        )
        stream_dropped = CounterMetricFamily(
            "kvs_gossip_stream_dropped",
            'Gossip TCP (push-pull) sessions dropped, by reason ("auth": unauthenticated)',
            labels=["reason"],
        )
        for name, value in sorted(counters.items()):
            if name.startswith("stream_dropped_"):
                stream_dropped.add_metric([name[len("stream_dropped_") :]], value)
            elif name.startswith("dropped_"):
                dropped.add_metric([name[len("dropped_") :]], value)
        yield dropped
        yield stream_dropped
        push_pulls = CounterMetricFamily(
            "kvs_gossip_push_pulls", "Member-table exchanges over TCP", labels=["result"]
        )
        push_pulls.add_metric(["initiated"], counters.get("push_pulls", 0))
        push_pulls.add_metric(["served"], counters.get("push_pulls_served", 0))
        push_pulls.add_metric(["failed"], counters.get("push_pull_failures", 0))
        yield push_pulls
        yield CounterMetricFamily(
            "kvs_gossip_join_failures", "Failed join attempts", counters.get("join_failures", 0)
        )
        yield GaugeMetricFamily(
            "kvs_gossip_awareness", "Lifeguard local health (0 is healthy)", stats["awareness"]
        )

    def _sync(self, sync: dict[str, Any]) -> Iterator[Metric]:
        c = sync["counters"]
        exchanges = CounterMetricFamily(
            "kvs_sync_exchanges", "Anti-entropy exchanges started by this node", labels=["result"]
        )
        exchanges.add_metric(["completed"], c.get("exchanges", 0))
        exchanges.add_metric(["equal"], c.get("exchanges_equal", 0))
        exchanges.add_metric(["failed"], c.get("exchange_failures", 0))
        yield exchanges
        yield CounterMetricFamily(
            "kvs_sync_records_pulled",
            "Records fetched from peers by anti-entropy",
            c.get("records_fetched", 0),
        )
        pushed = CounterMetricFamily(
            "kvs_sync_records_pushed", "Records sent to peers", labels=["path"]
        )
        pushed.add_metric(["anti_entropy"], c.get("records_pushed", 0))
        pushed.add_metric(["on_write"], c.get("pushed_on_write", 0))
        yield pushed
        yield CounterMetricFamily(
            "kvs_sync_records_merged",
            "Replicated records stored (they won over the local version)",
            c.get("records_merged", 0),
        )
        traffic = CounterMetricFamily("kvs_sync_bytes", "Sync TCP bytes", labels=["direction"])
        traffic.add_metric(["in"], c.get("bytes_in", 0))
        traffic.add_metric(["out"], c.get("bytes_out", 0))
        yield traffic
        dropped = CounterMetricFamily(
            "kvs_sync_dropped",
            'Sync sessions dropped, by reason ("auth": unauthenticated)',
            labels=["reason"],
        )
        for name, value in sorted(c.items()):
            if name.startswith("dropped_"):
                dropped.add_metric([name[len("dropped_") :]], value)
        yield dropped
        depth = GaugeMetricFamily(
            "kvs_sync_push_queue_depth", "Keys waiting to be pushed, per peer", labels=["peer"]
        )
        for peer, pending in sorted(sync["push_queue"].items()):
            depth.add_metric([peer], pending)
        yield depth
        for name, what in (
            ("push_queue_overflow", "Writes left to anti-entropy because a push queue was full"),
            ("push_failures", "Push connections that failed"),
            ("clock_offset_exceeded", "Records from peers whose clocks are off too far"),
            ("refused_future", "Records from peers refused: written too far in our future"),
            ("errors", "Exchanges and push links that failed unexpectedly (logged)"),
        ):
            yield CounterMetricFamily(f"kvs_sync_{name}", what, c.get(name, 0))
        yield GaugeMetricFamily(
            "kvs_sync_syncing", "1 while bootstrapping from the cluster", float(sync["syncing"])
        )


def make_registry(
    node: NodeView, hub: WatchHub, front: HttpStats
) -> tuple[CollectorRegistry, HttpMetrics]:
    registry = CollectorRegistry()
    http = HttpMetrics()
    registry.register(http)
    registry.register(NodeCollector(node, hub, front))
    return registry, http
