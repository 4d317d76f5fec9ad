"""Monitoring: Prometheus metrics and the /metrics, /healthz and /readyz endpoints."""
