"""Scaling out: the durable job queue across engines, replicas and workers behind HAProxy."""
