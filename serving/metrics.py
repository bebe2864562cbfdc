"""Request counters and latency histograms per arm, rendered in the Prometheus text format.

Each router replica counts its own requests; `/metrics` merges the snapshots of every replica (Serve broadcast),
so one scrape sees the whole deployment whichever replica answers it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LATENCY_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


@dataclass
class RouterMetrics:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (arm, queue)
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)  # (arm, reason)
    arm_errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (arm, kind)
    rejected: Counter[str] = field(default_factory=Counter)  # HTTP status
    latency_buckets: Counter[tuple[str, float]] = field(default_factory=Counter)  # (arm, le)
    latency_sum: dict[str, float] = field(default_factory=dict)
    latency_count: Counter[str] = field(default_factory=Counter)
    versions: dict[str, str] = field(default_factory=dict)  # arm -> model:version
    # The event-log writers' counts (serving.store.writer.WriterStats), summed over replicas.
    events: Counter[str] = field(default_factory=Counter)

    def record(self, arm: str, queue: str, latency_ms: float, fallback_reason: str | None, version: str) -> None:
        self.requests[(arm, queue)] += 1
        if fallback_reason:
            self.fallbacks[(arm, fallback_reason.split(":", 1)[0])] += 1
        for le in LATENCY_BUCKETS_MS:
            if latency_ms <= le:
                self.latency_buckets[(arm, le)] += 1
        self.latency_sum[arm] = self.latency_sum.get(arm, 0.0) + latency_ms
        self.latency_count[arm] += 1
        self.versions[arm] = version

    def snapshot(self) -> dict[str, Any]:
        """Plain data, safe to send between replicas."""
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "fallbacks": [[*k, v] for k, v in self.fallbacks.items()],
            "arm_errors": [[*k, v] for k, v in self.arm_errors.items()],
            "rejected": dict(self.rejected),
            "latency_buckets": [[*k, v] for k, v in self.latency_buckets.items()],
            "latency_sum": dict(self.latency_sum),
            "latency_count": dict(self.latency_count),
            "versions": dict(self.versions),
        }


def merge(snapshots: Iterable[Mapping[str, Any]]) -> RouterMetrics:
    total = RouterMetrics()
    for snap in snapshots:
        for a, q, v in snap["requests"]:
            total.requests[(a, q)] += v
        for a, r, v in snap["fallbacks"]:
            total.fallbacks[(a, r)] += v
        for a, k, v in snap["arm_errors"]:
            total.arm_errors[(a, k)] += v
        total.rejected.update(snap["rejected"])
        for a, le, v in snap["latency_buckets"]:
            total.latency_buckets[(a, float(le))] += v
        for a, v in snap["latency_sum"].items():
            total.latency_sum[a] = total.latency_sum.get(a, 0.0) + v
        total.latency_count.update(snap["latency_count"])
        total.versions.update(snap["versions"])
        writer = snap.get("writer") or {}
        total.events.update({k: int(v) for k, v in writer.items()})
    return total


def _labels(**kv: str) -> str:
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in kv.items()
    )
    return "{" + inner + "}"


def render(m: RouterMetrics, experiment: str) -> str:
    """Prometheus exposition format 0.0.4."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    family("mailroute_requests_total", "counter", "Routed emails by arm and queue.")
    for (arm, queue), v in sorted(m.requests.items()):
        out.append(f"mailroute_requests_total{_labels(experiment=experiment, arm=arm, queue=queue)} {v}")
    family("mailroute_fallbacks_total", "counter", "Emails answered by a fallback arm or triage, by arm and reason.")
    for (arm, reason), v in sorted(m.fallbacks.items()):
        out.append(f"mailroute_fallbacks_total{_labels(experiment=experiment, arm=arm, reason=reason)} {v}")
    family("mailroute_arm_errors_total", "counter", "Model calls that failed or timed out, by arm.")
    for (arm, kind), v in sorted(m.arm_errors.items()):
        out.append(f"mailroute_arm_errors_total{_labels(experiment=experiment, arm=arm, kind=kind)} {v}")
    family("mailroute_rejected_total", "counter", "Requests refused with a 4xx, by status.")
    for status, v in sorted(m.rejected.items()):
        out.append(f"mailroute_rejected_total{_labels(status=status)} {v}")
    family("mailroute_latency_ms", "histogram", "Route latency in the router, milliseconds, by arm.")
    for arm in sorted(m.latency_count):
        for le in LATENCY_BUCKETS_MS:
            count = m.latency_buckets.get((arm, float(le)), 0)
            out.append(f"mailroute_latency_ms_bucket{_labels(experiment=experiment, arm=arm, le=str(le))} {count}")
        inf = _labels(experiment=experiment, arm=arm, le="+Inf")
        out.append(f"mailroute_latency_ms_bucket{inf} {m.latency_count[arm]}")
        out.append(f"mailroute_latency_ms_sum{_labels(experiment=experiment, arm=arm)} {m.latency_sum[arm]:.3f}")
        out.append(f"mailroute_latency_ms_count{_labels(experiment=experiment, arm=arm)} {m.latency_count[arm]}")
    family("mailroute_events_written_total", "counter", "Prediction records and shadow results written to the log.")
    out.append(f"mailroute_events_written_total {m.events['written']}")
    family("mailroute_events_dropped_total", "counter", "Records that could never be written (the store refused them).")
    out.append(f"mailroute_events_dropped_total {m.events['dropped']}")
    family("mailroute_events_refused_total", "counter", "Records not taken (write buffer full): answered 503.")
    out.append(f"mailroute_events_refused_total {m.events['refused']}")
    family("mailroute_events_pending", "gauge", "Records waiting in the routers' write buffers.")
    out.append(f"mailroute_events_pending {m.events['pending']}")
    family("mailroute_event_log_failing", "gauge", "Router replicas whose event-log writes are failing right now.")
    out.append(f"mailroute_event_log_failing {m.events['failing']}")
    family("mailroute_model_info", "gauge", "The model version each arm served last (value 1).")
    for arm, version in sorted(m.versions.items()):
        out.append(f"mailroute_model_info{_labels(experiment=experiment, arm=arm, model=version)} 1")
    return "\n".join(out) + "\n"
