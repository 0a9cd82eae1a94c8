"""Prometheus metrics of one app instance (its own registry, so apps in one process never clash).

Labels are bounded sets (model version, lane, outcome, error code); session and job ids are
never labels.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ptq4vm_core.engine.runtime import BUDGET

# Seconds: from a quick PNG encode (~0.2 ms) to a large frame on a busy CPU (~2 s).
TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)


class Metrics:
    """Every metric the service exports; `render()` gives the Prometheus text format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames_received = Counter(
            "ptq4vm_stream_frames_received", "Frames received over WebSocket sessions.", registry=r
        )
        self.frames_matted = Counter(
            "ptq4vm_frames_matted",
            "Frames matted, by model version and lane (realtime: "
            "sessions and /v1/matte, batch: video jobs).",
            ["model", "lane"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "ptq4vm_stream_frames_dropped",
            "Frames of a session replaced by a newer one before they were processed.",
            registry=r,
        )
        self.frame_errors = Counter(
            "ptq4vm_stream_frame_errors", "Frames refused, by error code.", ["code"], registry=r
        )
        self.sessions_active = Gauge(
            "ptq4vm_stream_sessions_active", "Sessions with an open WebSocket.", registry=r
        )
        self.sessions_detached = Gauge(
            "ptq4vm_stream_sessions_detached",
            "Sessions whose WebSocket dropped, kept for resumption until their TTL.",
            registry=r,
        )
        self.sessions_evicted = Counter(
            "ptq4vm_stream_sessions_evicted",
            "Detached sessions evicted to make room for a live client.",
            registry=r,
        )
        self.sessions_started = Counter(
            "ptq4vm_stream_sessions_started", "Sessions started.", registry=r
        )
        self.sessions_refused = Counter(
            "ptq4vm_stream_sessions_refused",
            "Connections closed with an error or at capacity, by close code.",
            ["code"],
            registry=r,
        )
        self.queue_seconds = Histogram(
            "ptq4vm_queue_seconds",
            "Time a frame waited for an inference worker.",
            ["lane"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "ptq4vm_decode_seconds",
            "Time to decode an incoming frame.",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "ptq4vm_inference_seconds",
            "Time of one engine call (a batch), by model version.",
            ["model"],
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.encode_seconds = Histogram(
            "ptq4vm_encode_seconds",
            "Time to encode an outgoing matte.",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ptq4vm_batch_size", "Frames per engine call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.model_info = Gauge(
            "ptq4vm_model_info",
            "1 for the active model version (label version) and its engine.",
            ["version", "engine"],
            registry=r,
        )
        self.models_loaded = Gauge(
            "ptq4vm_models_loaded", "Model versions loaded in memory.", registry=r
        )
        self.jobs = Counter(
            "ptq4vm_jobs", "Video jobs that finished, by state.", ["state"], registry=r
        )
        self.jobs_active = Gauge("ptq4vm_jobs_active", "Video jobs queued or running.", registry=r)
        self.http_mattes = Counter(
            "ptq4vm_http_mattes", "Images matted by POST /v1/matte.", registry=r
        )
        self.default_build = Gauge(
            "ptq4vm_default_model_build",
            "Embedded default build: 1 on the current state's label.",
            ["state"],
            registry=r,
        )
        self.cores_reserved = Gauge(
            "ptq4vm_engine_cores_reserved",
            "Cores held by a calibration child; the engines run that many threads fewer.",
            registry=r,
        )
        self.cores_reserved.set_function(lambda: BUDGET.reserved)

    def set_active_model(self, version: str, engine: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version, engine=engine).set(1)

    def set_default_build(self, state: str) -> None:
        self.default_build.clear()
        self.default_build.labels(state=state).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
