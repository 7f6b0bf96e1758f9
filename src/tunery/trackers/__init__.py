"""Experiment trackers: a child program (``python -m tunery.trackers``) that logs one finished job to W&B or MLflow."""
