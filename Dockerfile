# qkdops runtime image: the emulated links, both exporters, the control API and the pager sink (`qkdops up
# --no-prometheus`); Prometheus, Alertmanager and Grafana run from their official images
# (docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY qkdlink ./qkdlink
COPY qkdops ./qkdops
COPY exporters ./exporters
# Editable install: the code finds its data beside it in /app (links.yaml, runbooks/ served at
# /runbooks/<AlertName>, the metric catalogue), exactly as in a checkout.
RUN pip install --no-cache-dir -e .
COPY links.yaml ./
COPY runbooks ./runbooks
RUN useradd --system --uid 10001 qkdops && mkdir -p /app/var && chown qkdops /app/var
USER qkdops
EXPOSE 9800 9810 9811 9820
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9800/healthz', timeout=2)"
ENTRYPOINT ["qkdops"]
CMD ["up", "--config", "/app/links.yaml", "--bind", "0.0.0.0", "--no-prometheus"]
