"""The Celery contender's task, loaded by its workers and its front end.

One worker per replica (``BENCH_REPLICA``), concurrency 1, every worker consuming the one
queue: Celery's answer to "send the request to a free replica". Configured as Celery's docs
advise for long tasks: ``task_acks_late`` and ``worker_prefetch_multiplier = 1``, so a busy
worker does not reserve messages another worker could run (the default multiplier of 4
would let a worker hold up to 4 requests while its replica is busy).
"""

from __future__ import annotations

import os
from typing import Any

import requests
from celery import Celery

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0")
BACKEND = os.environ.get("BENCH_RESULTS", "redis://127.0.0.1:6379/1")
MODEL = "sim-model"

app = Celery("bench", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_default_queue="bench",
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_session: requests.Session | None = None


@app.task(name="bench.infer")
def infer(service_ms: float) -> dict[str, Any]:
    """Call this worker's replica, as an inference task would; its status and body."""
    global _session
    if _session is None:  # per process, after any fork: keep-alive to the replica
        _session = requests.Session()
    resp = _session.post(
        f"http://{os.environ['BENCH_REPLICA']}/v1/completions",
        headers={"x-model": MODEL, "x-sim-service-ms": f"{service_ms:.3f}"},
        data=b"{}",
        timeout=600,
    )
    return {"status": resp.status_code, "body": resp.text[:200]}
