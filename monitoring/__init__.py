"""What watches the links: the Prometheus and Alertmanager configuration, the SLO rule generator
and the pager sink that stands in for a paging service.

Modules: ``prometheus`` (scrape and rule configuration, local and compose), ``alertmanager``
(routing to the pagers, the runbook base URL), ``slo`` (burn-rate rules from ``slo/qkd.yaml``),
``pager_sink`` (the webhook receiver ``qkdops up`` runs in place of a pager).
"""
