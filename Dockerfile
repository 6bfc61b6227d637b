# qkdops runtime image, one image for the qkdops services of docker-compose.yml:
#   qkdops       the emulated links, both exporters, the control API, the sites' KMEs (ETSI GS QKD 014,
#                HTTPS; dev PKI created in the state volume on first start) and the pager sink (`qkdops up
#                --no-prometheus --no-calibration`, the default command);
#   calibration  the calibration scheduler (`qkdops scheduler …`);
#   api-token    a one-shot that creates the control API token in its own volume.
# Prometheus, Alertmanager and Grafana run from their official images.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY qkdlink ./qkdlink
COPY qkdops ./qkdops
COPY exporters ./exporters
COPY control_api ./control_api
COPY monitoring ./monitoring
COPY dashboards ./dashboards
COPY calibration_jobs ./calibration_jobs
COPY gameday ./gameday
COPY history ./history
COPY qkdops_cli ./qkdops_cli
# Editable install: the code finds its data beside it in /app (links.yaml, monitoring.yaml, runbooks/
# served at /runbooks/<AlertName>, the metric catalogue, calibration_jobs/jobs.yaml), exactly as in a
# checkout.
# sslpsk3 (the SKIP key providers' TLS-PSK) compiles against OpenSSL: the compiler and headers are
# installed for the build only.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && pip install --no-cache-dir -e . \
    && apt-get purge -y gcc libc6-dev libssl-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
COPY links.yaml monitoring.yaml ./
COPY runbooks ./runbooks
# The fleet config the containers run: links.yaml listening on 0.0.0.0 (the compose network; ports are
# published on 127.0.0.1 only) with an absolute state_dir; derived here so it cannot drift from links.yaml.
RUN python -c "from qkdops_cli.stack import write_container_config; write_container_config('/app/links.yaml', '/etc/qkdops/links.yaml')"
# The kme-probe's targets: the fleet's KMEs on the compose network (service qkdops), the PKI in the state volume.
RUN python -c "from qkdops.config import load_config; from qkdops_cli.stack import write_kme_probe_config; c = load_config('/etc/qkdops/links.yaml'); write_kme_probe_config(c, 'qkdops', c.runtime.state_dir / 'pki', '/etc/qkdops/kme-probe.yaml')"
# /app/var: each service's state (a volume per service); /app/secrets: the control API token (volume
# api-token; a fresh volume takes this directory's owner and mode).
RUN useradd --system --uid 10001 qkdops && mkdir -p /app/var /app/secrets \
    && chown qkdops /app/var /app/secrets && chmod 0700 /app/secrets
USER qkdops
EXPOSE 9800 9810 9811 9812 9813 9820 9830 9831 9832 9833 9834 9835 9930 9931 9932 9933 9934 9935
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9800/healthz', timeout=2)"
ENTRYPOINT ["qkdops"]
CMD ["up", "--config", "/etc/qkdops/links.yaml", "--no-prometheus", "--no-calibration"]
