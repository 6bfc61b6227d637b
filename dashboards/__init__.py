"""Grafana dashboards generated from code and the monitoring config (``qkdops generate --only dashboards``)."""
