"""Prometheus text exposition for the service: requests, latency histogram, batch sizes, queue depth.

Small on purpose (no client library): counters and histograms live in dicts guarded by one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    inner = ",".join(f'{k}="{esc(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


class ServiceMetrics:
    """Request counts by (method, route, status) and latency histograms by (method, route)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], list[float]] = {}  # bucket counts..., sum, count
        self._collectors: list[Callable[[], list[str]]] = []

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            hist = self._latency.setdefault((method, route), [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += seconds
            hist[-1] += 1

    def add_collector(self, collect: Callable[[], list[str]]) -> None:
        """Add a function returning ready exposition lines (for batcher and queue figures)."""
        self._collectors.append(collect)

    def render(self) -> str:
        lines = [
            "# HELP embedsmith_http_requests_total HTTP requests by method, route and status code.",
            "# TYPE embedsmith_http_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), n in sorted(self._requests.items()):
                labels = _labels([("method", method), ("route", route), ("status", status)])
                lines.append(f"embedsmith_http_requests_total{labels} {n}")
            lines += [
                "# HELP embedsmith_http_request_duration_seconds Time from request start to response end.",
                "# TYPE embedsmith_http_request_duration_seconds histogram",
            ]
            for (method, route), hist in sorted(self._latency.items()):
                base = [("method", method), ("route", route)]
                for i, bound in enumerate(LATENCY_BUCKETS):
                    lines.append(f"embedsmith_http_request_duration_seconds_bucket"
                                 f"{_labels([*base, ('le', repr(bound))])} {int(hist[i])}")
                lines.append(f"embedsmith_http_request_duration_seconds_bucket{_labels([*base, ('le', '+Inf')])} "
                             f"{int(hist[-1])}")
                lines.append(f"embedsmith_http_request_duration_seconds_sum{_labels(base)} {hist[-2]:.6f}")
                lines.append(f"embedsmith_http_request_duration_seconds_count{_labels(base)} {int(hist[-1])}")
        for collect in self._collectors:
            lines += collect()
        return "\n".join(lines) + "\n"


def histogram_lines(name: str, help_text: str, labels: list[tuple[str, str]], bounds: Iterable[float],
                    counts: list[int], total: float, count: int) -> list[str]:
    """Exposition lines of a histogram from per-bucket (not cumulative) counts."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    running = 0
    for bound, n in zip(bounds, counts, strict=False):
        running += n
        lines.append(f"{name}_bucket{_labels([*labels, ('le', str(bound))])} {running}")
    lines.append(f"{name}_bucket{_labels([*labels, ('le', '+Inf')])} {count}")
    lines.append(f"{name}_sum{_labels(labels)} {total}")
    lines.append(f"{name}_count{_labels(labels)} {count}")
    return lines


def sample_lines(name: str, help_text: str, kind: str, samples: list[tuple[list[tuple[str, str]], float]]) -> list[str]:
    """Exposition lines of a counter or gauge with labelled samples."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(labels)} {value:g}" for labels, value in samples]
    return lines
