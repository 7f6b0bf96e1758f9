"""``python -m tunery.trackers``: log a finished job to W&B (offline by default) or MLflow.

Reads a JSON spec on stdin (built by ``services/trackers.py``): the integration's options, the job, its
resolved hyperparameters and every results.csv row. Prints one line for the job's events on success; on
failure prints the reason on stderr and exits 1. Runs in its own process so that neither client library
is imported by the web process, and a tracker that hangs or crashes only costs this process.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

MLFLOW_BATCH = 900  # MLflow takes at most 1000 metrics per log_batch


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    found = {}
    for key, value in row.items():
        if key == "step" or value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            found[key] = number
    return found


def log_wandb(spec: dict[str, Any]) -> str:
    import wandb

    options, job = spec["options"], spec["job"]
    run = wandb.init(
        project=options.get("project"),
        entity=options.get("entity"),
        name=options.get("name") or job["id"],
        tags=list(options.get("tags") or []),
        id=job["id"],  # as OpenAI: the run id is the job id
        config={
            **spec["hyperparameters"],
            "base_model": job["base_model"],
            "method": job["method"],
            "seed": job["seed"],
            "fine_tuning_job_id": job["id"],
        },
        dir=spec["wandb_dir"],
        mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
        settings=wandb.Settings(silent=True, console="off"),
    )
    for row in spec["metrics"]:
        run.log(_numeric(row), step=int(row["step"]))
    run.summary["fine_tuned_model"] = job["fine_tuned_model"]
    run.summary["status"] = job["status"]
    if job.get("trained_tokens") is not None:
        run.summary["trained_tokens"] = job["trained_tokens"]
    run.config.update({"fine_tuned_model": job["fine_tuned_model"]}, allow_val_change=True)
    run_dir = os.path.dirname(run.dir)
    run.finish()
    where = f"offline run in {run_dir} (upload it with `wandb sync`)" if run.offline else f"run {run.url}"
    return f"Logged {len(spec['metrics'])} steps to W&B {where}."


def log_mlflow(spec: dict[str, Any]) -> str:
    uri = spec.get("mlflow_tracking_uri")
    if not uri:
        raise RuntimeError("no MLflow tracking URI is configured (TUNERY_INTEGRATIONS__MLFLOW_TRACKING_URI)")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    options, job = spec["options"], spec["job"]
    client = MlflowClient(tracking_uri=uri)
    experiment_name = options.get("project") or "tunery"
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    tags = {str(tag): "" for tag in options.get("tags") or []}
    tags.update({"fine_tuning_job_id": job["id"], "base_model": job["base_model"], "method": job["method"]})
    if options.get("entity"):
        tags["entity"] = str(options["entity"])
    run = client.create_run(experiment_id, run_name=options.get("name") or job["id"], tags=tags)
    now_ms = int(time.time() * 1000)
    metrics = [
        Metric(key, value, now_ms, int(row["step"])) for row in spec["metrics"] for key, value in _numeric(row).items()
    ]
    params = [Param(key, str(value)) for key, value in spec["hyperparameters"].items()]
    params.append(Param("seed", str(job["seed"])))
    client.log_batch(run.info.run_id, params=params)
    for start in range(0, len(metrics), MLFLOW_BATCH):
        client.log_batch(run.info.run_id, metrics=metrics[start : start + MLFLOW_BATCH])
    client.log_batch(run.info.run_id, tags=[RunTag("fine_tuned_model", str(job["fine_tuned_model"]))])
    client.set_terminated(run.info.run_id, status="FINISHED" if job["status"] == "succeeded" else "FAILED")
    return f"Logged {len(spec['metrics'])} steps to MLflow run {run.info.run_id} (experiment '{experiment_name}')."


def main() -> int:
    spec = json.loads(sys.stdin.read())
    try:
        message = log_wandb(spec) if spec["target"] == "wandb" else log_mlflow(spec)
    except Exception as exc:  # the edge: report any failure as one line
        sys.stderr.write(f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500] + "\n")
        return 1
    sys.stdout.write(message + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
