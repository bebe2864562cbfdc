"""Event-log records for tests: a prediction with plain defaults, any field overridden by keyword.

Importable from every test folder (pytest puts `tests/`, the folder of the top conftest.py, on sys.path).
"""

from __future__ import annotations

from typing import Any

from serving.store.eventlog import PredictionEvent


def prediction(request_id: str, ts: str, **fields: Any) -> PredictionEvent:
    """A confident linear-arm prediction to billing, stored at `ts`, with its own subject and body."""
    values: dict[str, Any] = {
        "request_id": request_id,
        "ts": ts,
        "user_key": "k" * 32,
        "arm": "linear",
        "model_name": "linear",
        "model_version": "v1",
        "queue": "billing",
        "confidence": 0.8,
        "fallback": False,
        "reason": "confident",
        "latency_ms": 2.0,
        "subject": f"subject of {request_id}",
        "body": f"body of {request_id}",
    }
    values.update(fields)
    return PredictionEvent(**values)
