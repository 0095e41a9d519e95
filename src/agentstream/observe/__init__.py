"""The instruments the worker feeds and never reaches back into: Prometheus
metrics and their server, health probes, systemd notifications, and the counts
they are fed with."""
