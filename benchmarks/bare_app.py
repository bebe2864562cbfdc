"""The serving benchmark's baseline: the linear predictor and the decision policy in one uvicorn process.

Same request model, same parsing and cleaning, same predictor and policy as the router; no Ray, no event log.
Run by benchmarks/bench_serving.py as `python benchmarks/bare_app.py PORT` with MAILROUTE_HOME set.
"""

from __future__ import annotations

import sys

import numpy as np
import uvicorn
from fastapi import FastAPI

from serving.api import RouteRequest, email_from_request, text_for_model
from serving.config import Home, ServingConfig, load_queues
from serving.models.predictor import load_version
from serving.models.registry import open_registry
from serving.policy import decide

queues = load_queues()
policy = ServingConfig().policy
predictor, meta = load_version(open_registry(Home.resolve()), "linear")
app = FastAPI()


@app.post("/v1/route")
async def route(req: RouteRequest) -> dict[str, object]:
    text = text_for_model(email_from_request(req, 262_144))
    d = decide(predictor.labels, np.asarray(predictor.predict_proba([text])[0]), policy, queues.triage_queue)
    return {"queue": d.queue, "confidence": d.confidence, "secondary_queue": d.secondary_queue, "reason": d.reason}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
