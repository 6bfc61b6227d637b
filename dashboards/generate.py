"""Generate the qkdops Grafana dashboards (executive, on-call, debug, SLO) with grafana-foundation-sdk,
from code and the monitoring config (runbook links, the thresholds panels draw as the rules have them).

    qkdops generate --only dashboards           # rewrite dashboards/*.json
    qkdops generate --only dashboards --check   # exit 1 if the committed JSON is not the generated one

Every panel queries only metrics of exporters/catalogue.yaml, recording rules of alert_rules/*.yml, or
ALERTS; tests/test_dashboards.py checks that, the JSON structure, and (slow) that every query returns
data from a real `qkdops up` Prometheus. A panel whose query is legitimately empty on a healthy stack
says so in its description with the marker ``INTENDED_EMPTY`` and the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DashboardLinkType, DataSourceRef, GridPos, Threshold, ThresholdsMode, VariableRefresh
from grafana_foundation_sdk.models.common import GraphTresholdsStyleMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from monitoring import slo as slo_specs
from monitoring.config import MonitoringConfig, promql_number
from monitoring.rules import SPEC_DIR

DIRECTORY = Path(__file__).resolve().parent
INTENDED_EMPTY = "Intended empty state:"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
L = '{link="$link"}'

# Threshold step lists: (value or None for the base step, colour).
GOOD_HIGH_99 = [(None, "red"), (0.95, "orange"), (0.99, "green")]
BUDGET = [(None, "red"), (0.0, "orange"), (0.25, "green")]
BURN = [(None, "green"), (1.0, "orange"), (6.0, "red")]
QBER = [(None, "green"), (0.05, "orange"), (0.11, "red")]
NONE = [(None, "green")]


@dataclass
class P:
    """One panel: kind is timeseries, stat, table or heatmap; queries are (expr, legend) pairs.

    ``row(title)`` makes a row header instead (kind ``row``): a full-width line that groups the
    panels after it, with no query."""

    kind: str
    title: str
    description: str
    unit: str
    queries: list[tuple[str, str]]
    thresholds: list[tuple[float | None, str]] = field(default_factory=lambda: NONE)
    w: int = 12
    h: int = 8
    min: float | None = None
    max: float | None = None
    instant: bool = False
    runbook_links: bool = False
    trace_links: bool = False
    threshold_lines: bool = False   # time series: draw the thresholds as dashed lines (e.g. burn-rate tiers)


def row(title: str) -> P:
    """A row header grouping the panels after it (Grafana row panel, expanded)."""
    return P("row", title, "", "", [], w=24, h=1)


def _thresholds(steps: list[tuple[float | None, str]]) -> dashboard.ThresholdsConfig:
    return dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(value=v, color=c) for v, c in steps])


def _panel(spec: P, panel_id: int, x: int, y: int, config: MonitoringConfig):
    builder = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel, "heatmap": heatmap.Panel}[spec.kind]()
    b = (builder.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE)
         .grid_pos(GridPos(h=spec.h, w=spec.w, x=x, y=y)).unit(spec.unit).thresholds(_thresholds(spec.thresholds)))
    if spec.min is not None:
        b = b.min(spec.min)
    if spec.max is not None:
        b = b.max(spec.max)
    if spec.threshold_lines:
        b = b.thresholds_style(common.GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED))
    if spec.runbook_links:
        b = b.data_links([dashboard.DashboardLink("Runbook for ${__data.fields.alertname}").type(DashboardLinkType.LINK)
                          .url(config.runbook_url("${__data.fields.alertname}")).target_blank(True)])
    if spec.trace_links:
        b = b.links([dashboard.DashboardLink("Traces of this link's blocks (Jaeger)").type(DashboardLinkType.LINK)
                     .url(TRACES_URL).target_blank(True)])
    for i, (expr, legend) in enumerate(spec.queries):
        q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if spec.kind == "heatmap":
            q = q.format(PromQueryFormat.HEATMAP)
        elif spec.kind == "table" or spec.instant:
            q = q.instant().format(PromQueryFormat.TABLE if spec.kind == "table" else PromQueryFormat.TIME_SERIES)
        b = b.with_target(q)
    return b


def build(uid: str, title: str, description: str, panels: list[P], config: MonitoringConfig) -> dict:
    d = (dashboard.Dashboard(title).uid(uid).description(description).tags(["qkdops", "qkd"]).editable()
         .refresh("30s").time("now-1h", "now").timezone("browser")
         .with_variable(dashboard.DatasourceVariable("datasource").label("Datasource").type("prometheus"))
         .with_variable(dashboard.QueryVariable("link").label("Link").datasource(DATASOURCE)
                        .query("label_values(qkd_link_info, link)").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
         .with_variable(dashboard.TextBoxVariable("jaeger").label("Jaeger UI").default_value(JAEGER_DEFAULT)
                        .description("Base URL of the Jaeger UI receiving the runtime's traces (runtime.tracing: otlp)")))
    for other_uid, other_title in DASHBOARD_TITLES.items():
        if other_uid != uid:
            d = d.link(dashboard.DashboardLink(other_title).type(DashboardLinkType.LINK).url(f"/d/{other_uid}")
                       .include_vars(True).keep_time(True))
    x = y = row_h = 0
    for panel_id, spec in enumerate(panels, start=1):
        if spec.kind == "row":  # a row header starts a new line of its own
            y, x, row_h = y + row_h, 0, 0
            d = d.with_row(dashboard.Row(spec.title).id(panel_id).grid_pos(GridPos(h=1, w=24, x=0, y=y)))
            y += 1
            continue
        if x + spec.w > 24:
            x, y, row_h = 0, y + row_h, 0
        d = d.with_panel(_panel(spec, panel_id, x, y, config))
        x, row_h = x + spec.w, max(row_h, spec.h)
    model = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    for panel in model["panels"]:
        if panel.get("options") is None:  # this SDK leaves unset panel options as null; Grafana wants an object or nothing
            panel.pop("options", None)
    return model


# One trace per post-processed block (qkdops/runtime/pipeline.py), tagged qkd.link: search them for the
# panel's link and time range (Jaeger takes microseconds; Grafana's ${__from}/${__to} are milliseconds).
JAEGER_DEFAULT = "http://127.0.0.1:16686"
TRACES_URL = ("${jaeger}/search?service=qkdops-postprocessing&tags=%7B%22qkd.link%22%3A%22${link}%22%7D"
              "&start=${__from}000&end=${__to}000&limit=200")

DASHBOARD_TITLES = {"qkdops-executive": "QKD — Executive", "qkdops-oncall": "QKD — On-call",
                    "qkdops-debug": "QKD — Debug", "qkdops-slo": "QKD — SLOs"}

ALERTS_EMPTY = f"{INTENDED_EMPTY} no alert fires on a healthy stack."


def executive(config: MonitoringConfig) -> dict:
    return build("qkdops-executive", DASHBOARD_TITLES["qkdops-executive"], "Fleet health at a glance: key delivered, SLOs, incidents.", [
        P("stat", "Fleet secret-key throughput", "Secret key bits per second produced by all links (privacy-amplified and verified).",
          "bps", [("sum(rate(qkd_secret_key_bits_total[$__rate_interval]))", "fleet")], [(None, "red"), (1.0, "green")], w=6, h=6),
        P("stat", "Firing alerts", "Alerts firing now across the fleet (0 when none).", "short",
          [('count(ALERTS{alertstate="firing"}) or vector(0)', "firing")], [(None, "green"), (1.0, "red")], w=6, h=6),
        P("stat", "Block success rate (1 h)", "Share of post-processed blocks in the last hour that produced key, per link; "
          "the block-success SLO asks for 99 %.", "percentunit",
          [('sum by (link) (rate(qkd_blocks_total{outcome="success"}[1h])) / sum by (link) (rate(qkd_blocks_total[1h]))', "{{link}}")],
          GOOD_HIGH_99, w=12, h=6, min=0, max=1),
        P("timeseries", "Secret-key throughput per link", "Secret key rate per link.", "bps",
          [("sum by (link) (rate(qkd_secret_key_bits_total[$__rate_interval]))", "{{link}}")], [(None, "green")], w=24),
        P("stat", "Key availability vs SLO (30 d)", "Share of judged minutes in which each link met its key-rate target "
          "(key-availability SLI over 30 d); red below the 99 % objective.", "percentunit",
          [('1 - slo:sli_error:ratio_rate30d{slo="key-availability"}', "{{link}}"),
           ('slo:objective:ratio{slo="key-availability"}', "objective")], GOOD_HIGH_99, w=12, min=0, max=1),
        P("stat", "Error budget remaining (30 d)", "Share of each SLO's 30-day error budget left, per link and SLO; "
          "negative means the SLO is already missed.", "percentunit",
          [("slo:error_budget_remaining:ratio", "{{link}} {{slo}}")], BUDGET, w=12, max=1),
        P("table", "Active incidents", f"Alerts firing now, with a link to each runbook. {ALERTS_EMPTY}", "short",
          [('sum by (alertname, severity, link) (ALERTS{alertstate="firing"})', "")], [(None, "red")], w=24, runbook_links=True),
        *executive_key_delivery(),
    ], config)


HANDOFF_SUCCESS = [(None, "red"), (0.99, "orange"), (0.999, "green")]  # the key-handoff-success SLO asks for 99.9 %


def executive_key_delivery() -> list[P]:
    """Key delivered to the applications (SAEs) through the sites' KMEs, and whether it gets there."""
    return [
        row("Key delivery"),
        P("stat", "Keys served to applications (1 h)", "Keys the KMEs handed to applications (SAEs) in the last hour: "
          "enc_keys answers to master SAEs (each key is redeemed once more by its slave SAE with dec_keys). Empty until "
          "an application has fetched a key.", "short",
          [('sum(increase(qkd_kme_keys_served_total{call="enc_keys"}[1h]))', "keys")], [(None, "green")], w=6, h=6, min=0),
        P("stat", "Key hand-off success (1 h)", "Share of each link's block keys of the last hour that reached both ends' KMEs "
          "rather than being discarded (the link's hand-off buffer full): keys, not attempts — a key refused by a KME waits "
          "in the buffer and is retried, so a KME outage the buffer rides out costs lateness, not this; the "
          "key-handoff-success SLO asks for 99.9 %.", "percentunit",
          [('sum by (link) (rate(qkd_key_handoffs_total{outcome="success"}[1h])) / '
            'sum by (link) (rate(qkd_key_handoffs_total{outcome=~"success|buffer_full"}[1h]))',
            "{{link}}")], HANDOFF_SUCCESS, w=9, h=6, min=0, max=1),
        P("stat", "Keys held by the KMEs", "Keys (256 bits) the KMEs hold per link for the applications, at the end with "
          "fewer: what the applications can still draw if the link stopped now.", "short",
          [("min by (link) (qkd_key_store_keys)", "{{link}}")], [(None, "red"), (1.0, "green")], w=9, h=6, min=0),
        P("timeseries", "Keys served per link", "Keys per second the KMEs serve to master SAEs (enc_keys), per link. "
          "Empty until an application has fetched a key.", "short",
          [('sum by (link) (rate(qkd_kme_keys_served_total{call="enc_keys"}[$__rate_interval]))', "{{link}}")],
          [(None, "green")], w=24, min=0),
        P("timeseries", "Key rates as an SDN controller sees them (ETSI GS QKD 015)", "Per link, the qkdl_performance "
          "figures of the etsi-qkd-sdn-node YANG model over 5 m (docs/etsi-qkd-015.md): skr (secret key made), eskr "
          "(key the two KMEs took: available to applications) and expected_consumption (key the applications drew). "
          "eskr below skr is key lost before the KMEs; consumption near eskr leaves no headroom.", "bps",
          [("qkdl:skr_bits_per_second:rate5m", "{{link}} skr"), ("qkdl:eskr_bits_per_second:rate5m", "{{link}} eskr"),
           ("qkdl:expected_consumption_bits_per_second:rate5m", "{{link}} expected_consumption")],
          [(None, "green")], w=24, min=0),
    ]


def oncall(config: MonitoringConfig) -> dict:
    return build("qkdops-oncall", DASHBOARD_TITLES["qkdops-oncall"],
                 "One link ($link) for the engineer on call: what is wrong and where the runbook is.", [
        P("table", "Firing alerts for $link", f"Alerts firing now on the selected link; the data link opens its runbook. {ALERTS_EMPTY}",
          "short", [('sum by (alertname, severity) (ALERTS{alertstate="firing", link="$link"})', "")], [(None, "red")], w=24, h=5,
          runbook_links=True),
        P("timeseries", "QBER per basis", "Quantum bit error rate over 5 m of blocks per basis (Z key, X test) and the link's "
          "abort threshold; MDI/TF X-basis QBER is high by construction, alert on Z.", "percentunit",
          [(f"qkd_link:qber:ratio_rate5m{L}", "{{basis}}"), (f"qkd_link:qber_threshold_ratio:max10m{L}", "abort threshold")], QBER, min=0),
        P("timeseries", "Secret key rate vs target", "Secret key rate of the link and the rate its availability SLO asks for.", "bps",
          [(f"sum(rate(qkd_secret_key_bits_total{L}[$__rate_interval]))", "key rate"),
           (f"max(qkd_key_rate_target_bytes_per_second{L}) * 8", "target")], [(None, "green")], min=0),
        P("timeseries", "Detection rate", "Detection events per second as the detector reports it and from the counter.", "hertz",
          [(f"qkd_detection_rate_hertz{L}", "detector"), (f"sum(rate(qkd_detections_total{L}[$__rate_interval]))", "counter rate")],
          [(None, "red"), (1.0, "green")], w=8, min=0),
        P("timeseries", "Phase lock and relocks", "1 while the phase reference is locked (MDI/TF only, absent on BB84) and "
          "relocks per interval.", "short",
          [(f"qkd_phase_locked{L}", "locked"), (f"increase(qkd_phase_relocks_total{L}[$__rate_interval])", "relocks")],
          [(None, "red"), (1.0, "green")], w=8, min=0),
        P("timeseries", "Phase actuator usage", "Share of the phase actuator's (fibre stretcher's) range in use (MDI/TF only, "
          "absent on BB84). The phase_relock calibration job re-centres it at 0.8; at 1 the lock loop opens (QKDPhaseLockLost). "
          "A slow climb is normal drift; one that passes 0.8 without dropping back means nothing is relocking "
          "(QKDCalibrationSchedulerDown, QKDCalibrationFailing).", "percentunit",
          [(f"qkd_phase_actuator_usage_ratio{L}", "stretcher range used")], [(None, "green"), (0.8, "orange"), (1.0, "red")],
          w=8, min=0, max=1),
        P("timeseries", "Interference visibility", "Interference visibility against the link's best value of the last day.",
          "percentunit", [(f"qkd_interference_visibility_ratio{L}", "visibility"),
                          (f"qkd_link:interference_visibility:max1d{L}", "1-day best")], [(None, "red"), (0.8, "orange"), (0.9, "green")],
          w=8, max=1),
        P("timeseries", "Dark counts vs nominal", "Detector dark-count rate against a healthy detector of this link.", "hertz",
          [(f"qkd_dark_count_rate_hertz{L}", "dark counts"), (f"qkd_dark_count_rate_nominal_hertz{L}", "nominal")],
          [(None, "green")], w=8, min=0),
        P("timeseries", "Aborts by reason", "Blocks aborted per interval, by reason (every reason is published, zeros included).",
          "short", [('sum by (reason) (increase(qkd_blocks_total{link="$link", outcome="aborted"}[$__rate_interval]))', "{{reason}}")],
          [(None, "green"), (1.0, "red")], w=8, min=0, trace_links=True),
        P("timeseries", "Verification aborts and key mismatches", "Blocks aborted because the two ends' corrected strings "
          "failed verification (error correction left residual errors: QKDVerificationFailing pages on 2 in 10 m), and blocks "
          "whose two ends' keys differed at the key confirmation before hand-off, discarded and never served "
          "(QKDKeyMismatch pages on the first). Both 0 on a healthy link; `qkdops replay --link $link` re-checks the key "
          "fingerprints.", "short",
          [('sum(increase(qkd_blocks_total{link="$link", outcome="aborted", reason="verification"}[$__rate_interval]))',
            "verification aborts"),
           (f"sum(increase(qkd_key_confirmation_failures_total{L}[$__rate_interval]))", "key-confirmation failures")],
          [(None, "green"), (1.0, "red")], w=24, h=6, min=0),
        P("timeseries", "Calibration job runs by outcome (1 h)", "Runs of each calibration scheduler job on the link over the last "
          "hour, by outcome: healthy (in tolerance, nothing done), corrected (acted and verified), failed (acted, not effective), "
          "error (could not read or act), held (out of tolerance but backing off after failures). Outcomes without a run in the "
          "hour are not drawn. QKDCalibrationFailing fires on 2 or more failed/error runs that are at least half of the "
          "attempts (failed + error + corrected); `qkdops calibrate <job_name> --link $link` shows what a job sees.", "short",
          [(f"sum by (job_name, outcome) (increase(qkd_calibration_runs_total{L}[1h])) > 0", "{{job_name}} {{outcome}}")],
          [(None, "green")], w=12, min=0),
        P("stat", "Calibration failures in a row", "Failed or errored runs of each job since its last healthy or corrected run. "
          "The job backs off after each; after max_attempts ineffective actions it stops acting (held runs) until its signals "
          "recover or someone runs qkdops calibrate. 2 or more while held keeps QKDCalibrationFailing open.", "short",
          [(f"max by (job_name) (qkd_calibration_consecutive_failures{L})", "{{job_name}}")],
          [(None, "green"), (1.0, "orange"), (2.0, "red")], w=6, min=0),
        P("timeseries", "Calibration actions (1 h)", "Calibration actions the device ran in the last hour, by action and outcome, "
          "whoever asked: the scheduler's jobs, an operator (qkdops action) or a game day.",
          "short", [(f"sum by (action, outcome) (increase(qkd_calibration_actions_total{L}[1h]))", "{{action}} {{outcome}}")],
          [(None, "green")], w=6, min=0),
        *oncall_key_delivery(),
        *oncall_kme_probe(),
    ], config)


def oncall_kme_probe() -> list[P]:
    """The KMEs as their applications see them, over ETSI 014 (``qkdops kme-probe``: ours or a vendor's)."""
    return [
        row("KMEs seen by the kme-probe (every target)"),
        P("stat", "KME up per probe target", "1 when the target KME's last status call answered with a Status object "
          "(qkdops kme-probe: each target a KME and an SAE pair, probed every 10 s over ETSI 014, as an application "
          "would). QKDKMEUnreachable pages when every probe of 30 s failed.", "short",
          [("max by (target) (qkd_kme_probe_up)", "{{target}}")], [(None, "red"), (1.0, "green")], w=6, min=0, max=1),
        P("stat", "Round-trip keys agree", "1 when the target's last round trip (enc_keys at its KME, dec_keys of the same "
          "key ID at the peer's) gave the same key at both ends; 0 pages at once (QKDKMEKeysDisagree).", "short",
          [("min by (target) (qkd_kme_probe_keys_match)", "{{target}}")], [(None, "red"), (1.0, "green")], w=6, min=0, max=1),
        P("stat", "TLS certificate days left", "Days until the earliest TLS certificate of each target expires: the KME's "
          "server certificate or the probing SAE's own; under 14 days QKDKMECertificateExpiring opens a ticket.", "d",
          [("min by (target) (qkd_kme_probe_tls_certificate_expiry_timestamp_seconds - time()) / 86400", "{{target}}")],
          [(None, "red"), (7.0, "orange"), (14.0, "green")], w=12, min=0),
        P("timeseries", "Stored keys vs capacity per target", "stored_key_count the target KME reports for its SAE pair, "
          "and its max_key_count: a falling line is applications taking key faster than the link supplies it "
          "(QKDKMEKeyStoreLow when the 30-min trend empties it within the hour).", "short",
          [("max by (target) (qkd_kme_probe_stored_keys)", "{{target}} stored"),
           ("max by (target) (qkd_kme_probe_capacity_keys)", "{{target}} capacity")], [(None, "green")], w=12, min=0),
        P("timeseries", "Probe call latency", "Time each call of the last probe took, TLS handshake included: status, and on "
          "a round trip enc_keys at the target's KME and dec_keys at the peer's.", "s",
          [("max by (target, call) (qkd_kme_probe_duration_seconds)", "{{target}} {{call}}")], [(None, "green")], w=12, min=0),
    ]


def oncall_key_delivery() -> list[P]:
    """The link's key on its way to the two ends' KMEs: hand-off attempts, latency, backlog, KME stores."""
    def quantile(q: float) -> str:
        return f"histogram_quantile({q}, sum by (le) (rate(qkd_key_handoff_duration_seconds_bucket{L}[$__rate_interval])))"

    return [
        row("Key delivery"),
        P("timeseries", "Key hand-offs by outcome", "Attempts to hand the link's block keys to both ends' KMEs per interval, by "
          "outcome (every outcome is published, zeros included): success; kme_unavailable, kme_timeout (no answer within "
          "the 5 s hand-off timeout), store_full (a KME refusing for lack of storage) — the key waits in the buffer and is "
          "retried every second; buffer_full — the key is discarded. A store holding max_key_count is not a failure: the "
          "hand-off succeeds and the full-store policy discards surplus (Key flow panel). QKDKeyHandoffFailing pages on 3 "
          "or more failed attempts in a minute that are over 10 % of its attempts; "
          "`qkdops keys fetch --sae SAE --peer SAE` checks both KMEs end to end.", "short",
          [(f'sum by (outcome) (increase(qkd_key_handoffs_total{L}[$__rate_interval]))', "{{outcome}}")],
          [(None, "green")], w=8, min=0),
        P("timeseries", "Key provisioning latency", "Time from a block's key entering the link's buffer to both KMEs holding it, "
          "retries included (median and 99th percentile of the keys handed off in the interval; empty when none was). "
          "Healthy: a few ms to 50 ms. The key-provisioning-latency SLO counts keys later than 1 s (the red line).", "s",
          [(quantile(0.5), "p50"), (quantile(0.99), "p99")], [(None, "green"), (1.0, "red")], w=8, min=0),
        P("timeseries", "Hand-off backlog vs buffer capacity", "Distilled key in the link's buffer waiting for hand-off (at "
          "most a block's key when healthy, growing while the KMEs do not take key), and the buffer's capacity "
          "(runtime.key_store_capacity_bits): once the backlog reaches it, new key is discarded (buffer_full).", "bytes",
          [(f"qkd_key_handoff_backlog_bytes{L}", "backlog"), (f"qkd_key_handoff_buffer_capacity_bytes{L}", "capacity")],
          [(None, "green")], w=8, min=0),
        P("timeseries", "KME store keys per site", "Keys (256 bits) the KME at each end holds for this link, issued or not: "
          "grows with each hand-off, falls as applications fetch keys. Both ends hold the same key.", "short",
          [(f"qkd_key_store_keys{L}", "{{site}}")], [(None, "green")], w=12, min=0),
        P("timeseries", "Key flow through the KMEs", "Bits per second of this link's key, per end: handed off to the KMEs "
          "(ETSI GS QKD 015 eskr), issued to applications (enc_keys and SKIP key: expected_consumption) and discarded as "
          "surplus because the stores held max_key_count (key_delivery.full_store) — the healthy idle state when "
          "applications take less than the link makes, never a page.", "bps",
          [(f"8 * sum(rate(qkd_key_handed_off_bytes_total{L}[$__rate_interval]))", "handed off"),
           (f"8 * sum(rate(qkd_kme_key_issued_bytes_total{L}[$__rate_interval]))", "issued to applications"),
           (f"8 * sum(rate(qkd_key_store_discarded_bytes_total{L}[$__rate_interval]))", "discarded surplus")],
          [(None, "green")], w=12, min=0),
        P("stat", "Hand-off buffer used", "Backlog over the buffer's capacity (runtime.key_store_capacity_bits): at 100 % each "
          "new block's key is discarded (buffer_full).", "percentunit",
          [(f"max(qkd_key_handoff_backlog_bytes{L}) / max(qkd_key_handoff_buffer_capacity_bytes{L})", "used")],
          [(None, "green"), (0.5, "orange"), (0.9, "red")], w=6, min=0, max=1),
        P("stat", "KME store used per site", "Keys held over the store's capacity (key_delivery.max_key_count) at each end: "
          "100 % is the idle state of a link whose applications take less than it makes — each hand-off then discards "
          "surplus by key_delivery.full_store. Trouble is the other end of the scale: an empty store under demand "
          "(QKDKMEKeyExhausted).", "percentunit",
          [(f"max by (site) (qkd_key_store_keys{L}) / max by (site) (qkd_key_store_capacity_keys{L})", "{{site}}")],
          [(None, "red"), (0.05, "orange"), (0.2, "green")], w=6, min=0, max=1),
    ]


def debug(config: MonitoringConfig) -> dict:
    return build("qkdops-debug", DASHBOARD_TITLES["qkdops-debug"], "Device and post-processing internals of one link ($link) for engineers.", [
        P("timeseries", "Decoy yield per intensity", "Detections per sifted pulse of each decoy intensity class (the gain Q).",
          "short", [(f"sum by (intensity) (rate(qkd_decoy_detections_total{L}[$__rate_interval])) / "
                     f"sum by (intensity) (rate(qkd_decoy_pulses_sent_total{L}[$__rate_interval]))", "{{intensity}}")], min=0),
        P("timeseries", "Decoy pulses sent per intensity", "Sifted-class pulses sent per second per decoy intensity.", "short",
          [(f"sum by (intensity) (rate(qkd_decoy_pulses_sent_total{L}[$__rate_interval]))", "{{intensity}}")], min=0),
        P("timeseries", "Commanded vs measured mean photon number", "Mean photon number per pulse per intensity, commanded and measured.",
          "short", [(f"qkd_mean_photon_number_commanded{L}", "{{intensity}} commanded"),
                    (f"qkd_mean_photon_number_measured{L}", "{{intensity}} measured")], min=0),
        P("timeseries", "Intensity deviation", "|measured / commanded - 1| per intensity (near-zero levels left out).", "percentunit",
          [(f"qkd_link:mean_photon_number_deviation:ratio{L}", "{{intensity}}")], [(None, "green"), (0.05, "orange"), (0.1, "red")], min=0),
        P("timeseries", "Single-photon bounds Y1 / e1", "Finite-key decoy-estimation lower bound on the single-photon yield and upper "
          "bound on its phase-error rate, from the last block.", "percentunit",
          [(f"qkd_single_photon_yield_lower_bound_ratio{L}", "Y1 lower"),
           (f"qkd_single_photon_phase_error_upper_bound_ratio{L}", "e1 upper")], [(None, "green"), (0.11, "red")], min=0),
        P("heatmap", "Timing jitter", "Arrival time of sampled detections relative to the gate centre.", "s",
          [(f"sum by (le) (increase(qkd_timing_jitter_seconds_bucket{L}[$__rate_interval]))", "{{le}}")]),
        P("timeseries", "Detector efficiency", "Probability that an arriving photon clicks.", "percentunit",
          [(f"qkd_detector_efficiency_ratio{L}", "efficiency")], [(None, "red"), (0.05, "green")], w=6, min=0),
        P("timeseries", "Detector temperature", "Diode temperature; thermal dark counts double about every 10 K.", "celsius",
          [(f"qkd_detector_temperature_celsius{L}", "temperature")], [(None, "green"), (-30.0, "orange"), (-20.0, "red")], w=6),
        P("timeseries", "Detector live fraction", "Share of gates armed (not in dead time); falls when the detector saturates.",
          "percentunit", [(f"qkd_detector_live_time_ratio{L}", "live")], [(None, "red"), (0.5, "orange"), (0.9, "green")], w=6, max=1),
        P("timeseries", "Afterpulsing", "Probability that a click triggers a spurious click in a later gate.", "percentunit",
          [(f"qkd_detector_afterpulse_ratio{L}", "afterpulse")], [(None, "green"), (0.05, "orange"), (0.1, "red")], w=6, min=0),
        P("timeseries", "Clock offset", "Offset of the receiver's gate clock from the sender's pulse clock.", "s",
          [(f"qkd_clock_offset_seconds{L}", "offset")], [(None, "green")], w=8),
        P("timeseries", "RNG health", "1 while the RNG passes its health tests; bias P(1) - 1/2 of its raw bits.", "short",
          [(f"qkd_rng_health_pass{L}", "pass"), (f"qkd_rng_bias_ratio{L}", "bias")], [(None, "red"), (1.0, "green")], w=8),
        P("timeseries", "RNG health failures (1 h)", "RNG health-test failures in the last hour.", "short",
          [(f"increase(qkd_rng_health_failures_total{L}[1h])", "failures")], [(None, "green"), (1.0, "red")], w=8, min=0),
        P("timeseries", "Post-processing stage latency p95", "95th percentile of the time each post-processing stage takes per block.",
          "s", [("histogram_quantile(0.95, sum by (stage, le) "
                 f"(rate(qkd_postprocessing_stage_duration_seconds_bucket{L}[$__rate_interval])))", "{{stage}}")], w=24, min=0,
          trace_links=True),
        *decoy_estimation_row(),
        *postprocessing_row(config),
        *debug_key_delivery(),
    ], config)


# The sites at the link's two ends, as a `site` label: KME series are per site, not per link.
LINK_SITES = ('(label_replace(qkd_link_info{link="$link"}, "site", "$1", "alice", "(.+)") '
              'or label_replace(qkd_link_info{link="$link"}, "site", "$1", "bob", "(.+)"))')


def debug_key_delivery() -> list[P]:
    """The KMEs at the link's ends (ETSI GS QKD 014): what they answer, how fast, and the keys each SAE took."""
    def request_quantile(q: float) -> str:
        return (f"histogram_quantile({q}, sum by (site, call, le) (rate(qkd_kme_request_duration_seconds_bucket[$__rate_interval])) "
                f"and on (site) {LINK_SITES})")

    return [
        row("Key delivery (KMEs at the link's ends)"),
        P("timeseries", "KME requests by site, call and code", "ETSI GS QKD 014 requests per second the KMEs at the link's two "
          "sites answer, by call (status, enc_keys, dec_keys, other) and HTTP code: 200 served; 400 malformed or an unknown "
          "peer; 401 an SAE asking for what it may not have (QKDKMERequestsRefused); 503 not enough key stored "
          "(QKDKMEKeyExhausted when it lasts 5 m). A KME's series appear with its first answer; TLS handshakes refused "
          "are not requests.", "reqps",
          [(f"sum by (site, call, code) (rate(qkd_kme_requests_total[$__rate_interval])) and on (site) {LINK_SITES}",
            "{{site}} {{call}} {{code}}")], [(None, "green")], w=12, min=0),
        P("timeseries", "KME request latency", "Time the KMEs at the link's two sites take to answer a request (parsed request "
          "to response written), median and 99th percentile per site and call.", "s",
          [(request_quantile(0.5), "{{site}} {{call}} p50"), (request_quantile(0.99), "{{site}} {{call}} p99")],
          [(None, "green")], w=12, min=0),
        P("timeseries", "Keys served by SAE", "Keys of this link the KMEs serve per second to each application (SAE): enc_keys "
          "to the master, dec_keys to the slave redeeming the same keys. Present once an SAE has fetched a key.", "short",
          [(f"sum by (sae, call) (rate(qkd_kme_keys_served_total{L}[$__rate_interval]))", "{{sae}} {{call}}")],
          [(None, "green")], w=12, min=0),
        P("heatmap", "Key provisioning latency distribution", "Block keys handed off per interval by provisioning latency "
          "(buffered → held by both KMEs, retries included): healthy keys sit in the millisecond buckets, keys that waited "
          "for a KME in the seconds and beyond.", "s",
          [(f"sum by (le) (increase(qkd_key_handoff_duration_seconds_bucket{L}[$__rate_interval]))", "{{le}}")], w=12),
    ]


def postprocessing_row(config: MonitoringConfig) -> list[P]:
    """Post-processing on bits (issue 14): Cascade's measured efficiency and cost, privacy amplification, CPU, latency;
    QKDECEfficiencyDegraded's threshold from the monitoring config, as the rule has it."""
    margin, floor = (promql_number(config.thresholds[k]) for k in ("ec_efficiency_margin", "ec_efficiency_floor"))
    ec_ticket = f"clamp_min({margin} * qkd_link:ec_model_efficiency:max10m{L}, {floor})"
    def rate(metric: str, by: str = "") -> str:
        return f"sum{f' by ({by})' if by else ''} (rate({metric}{L}[$__rate_interval]))"

    def latency(q: float) -> str:
        return f"histogram_quantile({q}, sum by (le) (rate(qkd_postprocessing_duration_seconds_bucket{L}[$__rate_interval])))"

    per_block = f"({rate('qkd_blocks_total')} > 0)"
    return [
        row("Error correction & privacy amplification"),
        P("timeseries", "EC efficiency f: measured vs model", "Error-correction efficiency f = bits disclosed (Cascade's "
          "parities) / the Shannon limit n·H2(E) of the same blocks: per interval and over 30 m, against the f the link's "
          "finite-key model assumes (qkd_ec_model_efficiency) and QKDECEfficiencyDegraded's threshold "
          f"max({floor}, {margin} × model), "
          "which the 30-m f must exceed for 30 m to ticket. 1 is the limit no code beats. Empty on a link with "
          "postprocessing.engine: model (no bits reconciled).", "short",
          [(f"{rate('qkd_ec_leakage_bytes_total')} / ({rate('qkd_ec_shannon_limit_bytes_total')} > 0)", "measured f"),
           (f"qkd_link:ec_efficiency:ratio30m{L}", "measured f (30 m)"),
           (f"qkd_link:ec_model_efficiency:max10m{L}", "model f"),
           (ec_ticket, "ticket threshold")], [(None, "green")], w=8, min=1),
        P("timeseries", "Disclosed vs Shannon limit", "Bytes per second error correction disclosed on the classical channel "
          "(subtracted from the key by privacy amplification) against the least any code must disclose, n·H2(E); their ratio "
          "is f.", "Bps",
          [(rate("qkd_ec_leakage_bytes_total"), "disclosed"), (rate("qkd_ec_shannon_limit_bytes_total"), "Shannon limit")],
          [(None, "green")], w=8, min=0),
        P("timeseries", "EC messages and round trips per block", "Classical-channel messages (error correction, verification, "
          "privacy amplification) and round trips per post-processed block: each round trip costs the channel's latency "
          "twice, which is what makes error correction take time on a long link.", "short",
          [(f"{rate('qkd_ec_messages_total')} / {per_block}", "messages"),
           (f"{rate('qkd_ec_round_trips_total')} / {per_block}", "round trips")], [(None, "green")], w=8, min=0),
        P("timeseries", "EC frames and frame failures", "Error-correction frames (Cascade: up to 2^16 sifted bits; LDPC: "
          "codewords of up to 2^14 symbols) reconciled per interval; those left with residual errors (emulator truth; a real "
          "link sees them only as verification aborts, QKDVerificationFailing); and LDPC frames discarded after every blind "
          "round (their key bits made public and counted as leak). The bits engine's target: at most one failed frame in 10^3.",
          "short",
          [(f"sum(increase(qkd_ec_frames_total{L}[$__rate_interval]))", "frames"),
           (f"sum(increase(qkd_ec_frame_failures_total{L}[$__rate_interval]))", "failed frames"),
           (f"sum(increase(qkd_ec_frames_discarded_total{L}[$__rate_interval]))", "discarded frames (LDPC)")],
          [(None, "green")], w=8, min=0),
        P("timeseries", "Privacy amplification: input vs output", "Reconciled, verified bits hashed by privacy amplification "
          "(Toeplitz) per second, and the secret key bits it outputs: the gap is what the finite-key bound removes (the "
          "disclosed bits, the phase-error bound, the security parameters).", "bps",
          [(f"8 * {rate('qkd_privacy_amplification_input_bytes_total')}", "PA input"), (rate("qkd_secret_key_bits_total"), "secret key")],
          [(None, "green")], w=8, min=0),
        P("timeseries", "Post-processing CPU per stage", "CPU seconds per second the post-processing thread spends in each "
          "stage (1 = one core busy): error correction and privacy amplification dominate on the bits engine.", "percentunit",
          [(rate("qkd_postprocessing_cpu_seconds_total", "stage"), "{{stage}}")], [(None, "green")], w=8, min=0),
        P("timeseries", "Per-block post-processing latency", "Time from a block complete to its key buffered (queueing and "
          "classical-channel time included), median and 99th percentile of the blocks of the interval, against the M8 "
          "real-time target of 1 s (the red line).", "s",
          [(latency(0.5), "p50"), (latency(0.99), "p99")], [(None, "green"), (1.0, "red")], w=24, min=0, trace_links=True),
    ]


WINDOW = ("the decoy_estimation calibration job's finite-key decoy analysis of the sliding window of archived blocks "
          "(qkd_decoy_estimate_window_blocks of them)")


def decoy_estimation_row() -> list[P]:
    """Sliding-window decoy estimation (calibration scheduler) against the per-block results and the device."""
    return [
        row("Decoy estimation (sliding window)"),
        P("timeseries", "Y1 lower bound: window vs block", f"Lower bound on the single-photon (MDI: pair) yield from {WINDOW}, "
          "and from the last block's own estimation. The window holds more counts, so its bound is tighter (higher); the window "
          "bound falling while blocks still succeed is drift building up.", "percentunit",
          [(f"qkd_decoy_estimate_single_photon_yield_lower_bound_ratio{L}", "window"),
           (f"qkd_single_photon_yield_lower_bound_ratio{L}", "last block")], min=0),
        P("timeseries", "e1 upper bound: window vs block", f"Upper bound on the single-photon (MDI: pair) phase-error rate from "
          f"{WINDOW}, and from the last block's estimation. Near 0.11 and above, privacy amplification leaves little or no key.",
          "percentunit", [(f"qkd_decoy_estimate_single_photon_phase_error_upper_bound_ratio{L}", "window"),
                          (f"qkd_single_photon_phase_error_upper_bound_ratio{L}", "last block")],
          [(None, "green"), (0.11, "red")], min=0),
        P("timeseries", "QBER: window vs block", "Key-basis QBER over the sliding window of archived blocks, of the last block, and "
          "the link's abort threshold.", "percentunit",
          [(f"qkd_decoy_estimate_qber_ratio{L}", "window"), (f"qkd_block_qber_ratio{L}", "last block"),
           (f"qkd_link:qber_threshold_ratio:max10m{L}", "abort threshold")], QBER, w=8, min=0),
        P("timeseries", "Key rate: window estimate vs actual", "Secret-key rate the sliding window supports as one finite-key block "
          "(0 when it would abort), the key rate the link actually produces, and its target.", "Bps",
          [(f"qkd_decoy_estimate_key_rate_bytes_per_second{L}", "window estimate"),
           (f"sum(rate(qkd_secret_key_bits_total{L}[$__rate_interval])) / 8", "actual"),
           (f"max(qkd_key_rate_target_bytes_per_second{L})", "target")], w=8, min=0),
        P("timeseries", "Window estimate state", "1 for the sliding-window estimate's outcome, 0 for the others: none = it would "
          "issue key; qber, low_counts, estimation = why it would abort.", "short",
          [(f"qkd_decoy_estimate_state{L}", "{{reason}}")], [(None, "green")], w=8, min=0, max=1),
        P("timeseries", "Channel loss: observed vs device vs design", "Channel loss that makes the link model reproduce the "
          "window's measured signal gain (what the decoy optimiser tunes for), against the loss the device reports (fibre and "
          "faults; +Inf on a cut) and the link's design loss. Device above design: QKDChannelLossHigh (> 1 dB), QKDFiberCut "
          "(>= 20 dB). Observed above device: loss the configuration does not know of (weaker detectors).", "dB",
          [(f"qkd_decoy_observed_channel_loss_decibels{L}", "observed (window)"), (f"qkd_channel_loss_decibels{L}", "device"),
           (f"qkd_channel_loss_nominal_decibels{L}", "design")],
          w=8, min=0),
        P("timeseries", "Mean photon number: recommended vs commanded", "Mean photon number per pulse per intensity that the decoy "
          "optimiser recommends for the observed channel (advice; applied only where enabled), against what the source is "
          "commanded to send.", "short",
          [(f"qkd_decoy_recommended_mean_photon_number{L}", "{{intensity}} recommended"),
           (f"qkd_mean_photon_number_commanded{L}", "{{intensity}} commanded")], w=8, min=0),
        P("timeseries", "Recommended key-rate gain", "Predicted finite-key rate at the recommended decoy settings over the rate at "
          "the current ones, for the observed channel: 1 = already optimal; orange from 1.1 (10 % more key available by "
          "re-tuning).", "short",
          [(f"qkd_decoy_recommended_key_rate_gain_ratio{L}", "gain")], [(None, "green"), (1.1, "orange")], w=8, min=0),
        P("stat", "Window size", "Archived blocks in the sliding window of the last decoy estimation (0: nothing to estimate on).",
          "short", [(f"qkd_decoy_estimate_window_blocks{L}", "blocks")], [(None, "red"), (1.0, "green")], w=8, h=4),
        P("stat", "Window bounds failure probability", "Probability that the sliding-window bounds fail (the link's epsilon_sec); "
          "their confidence is 1 minus this.", "sci",
          [(f"qkd_decoy_estimate_failure_probability_ratio{L}", "epsilon")], w=8, h=4),
        P("stat", "Last decoy estimation", "Time since the decoy_estimation job last estimated this link; much more than its "
          "interval (calibration_jobs/jobs.yaml) means the job is held, failing or the scheduler is down.", "s",
          [(f"time() - max(qkd_decoy_estimate_timestamp_seconds{L})", "age")], w=8, h=4),
    ]


def slo(config: MonitoringConfig) -> dict:
    """An overview of every SLO on $link, then one row per SLO of the specs in slo/ (nothing per SLO written by hand)."""
    specs = slo_specs.generate(SPEC_DIR, config.values())[1]
    return build("qkdops-slo", DASHBOARD_TITLES["qkdops-slo"], "The SLOs of slo/ for one link ($link): objective, SLI, "
                 "error budget burn-down, burn rate per window against its alert tiers, firing burn alerts.", [
        P("timeseries", "SLI per SLO (1 h)", "Share of good events per SLO over the last hour, with each objective.", "percentunit",
          [(f"1 - slo:sli_error:ratio_rate1h{L}", "{{slo}}"), ("slo:objective:ratio", "{{slo}} objective")], GOOD_HIGH_99, w=12, max=1),
        P("stat", "Error budget remaining", "Share of each SLO's error budget over its period (30 d) left on this link; "
          "negative: overspent.", "percentunit", [(f"slo:error_budget_remaining:ratio{L}", "{{slo}}")], BUDGET, w=12, max=1),
        *(panel for spec in specs for panel in slo_row(spec)),
    ], config)


# Burn-rate tiers' colours on the burn-rate panels, slowest to fastest (slo.TIERS: 1x, 3x, 6x, 14.4x).
TIER_COLOURS = {"3d": "yellow", "1d": "orange", "6h": "red", "1h": "dark-red"}


def slo_row(spec: slo_specs.SLO) -> list[P]:
    """One SLO on $link: objective, SLI over its period, error budget burn-down, burn rate per window against
    the thresholds its alert tiers fire at, and its firing burn alerts — names as slo/README.md documents them."""
    sel = f'{{slo="{spec.name}", link="$link"}}'
    objective = float(spec.objective / 100)
    tiers = [(t, {"severity": t.kind, **spec.labels, **spec.alert_labels, **(spec.page if t.kind == "page" else spec.ticket).labels})
             for t in slo_specs.TIERS if not (spec.page if t.kind == "page" else spec.ticket).disable]
    tier_text = "; ".join(f"{slo_specs.fmt_decimal(t.burn_rate)} over {t.long} and {t.short} ({labels['severity']}, tier {t.long})"
                          for t, labels in tiers) or "no burn alerts"
    budget = f"{slo_specs.fmt_decimal(100 - spec.objective)} %"
    return [
        row(f"SLO {spec.name}: {slo_specs.fmt_decimal(spec.objective)} % over {spec.period}"),
        P("stat", f"{spec.name}: objective", f"The {spec.name} objective of {spec.source} (slo:objective:ratio): "
          f"an error budget of {budget} of its events over {spec.period}.", "percentunit",
          [(f'slo:objective:ratio{{slo="{spec.name}"}}', "objective")], w=3, h=7),
        P("stat", f"{spec.name}: SLI ({spec.period})", f"Share of good events over the last {spec.period} on this link "
          f"(events-weighted; 1 - slo:sli_error:ratio_rate{spec.period}); red below the objective. `qkdops slo report` "
          "prints the same per link, with the share of the period Prometheus has data for.", "percentunit",
          [(f"1 - slo:sli_error:ratio_rate{spec.period}{sel}", "SLI")], [(None, "red"), (objective, "green")], w=3, h=7, max=1),
        P("timeseries", f"{spec.name}: error budget remaining", f"Share of the {budget} error budget of the last {spec.period} "
          "left (slo:error_budget_remaining:ratio): 1 untouched, 0 spent, below 0 overspent (dashed lines at 25 % and 0). Falling "
          "steeply: the burn-rate panel beside it says how fast.", "percentunit",
          [(f"slo:error_budget_remaining:ratio{sel}", "budget left")], BUDGET, w=9, h=7, max=1, threshold_lines=True),
        P("timeseries", f"{spec.name}: burn rate per window", "Error-budget burn rate over each window "
          f"(slo:burn_rate:ratio_rate<window>; 1 spends the budget exactly over {spec.period}). A tier fires when both its "
          f"windows exceed its dashed line: {tier_text}.", "short",
          [(f"slo:burn_rate:ratio_rate{w}{sel}", w) for w in slo_specs.WINDOWS],
          [(None, "green"), *sorted((float(t.burn_rate), TIER_COLOURS[t.long]) for t, _ in tiers)], w=9, h=7, min=0,
          threshold_lines=True),
        P("table", f"{spec.name}: firing burn alerts", f"{spec.alert_name or spec.name} alerts firing now on this link, by tier "
          f"and severity; the data link opens the runbook. {ALERTS_EMPTY}", "short",
          [(f'sum by (alertname, tier, severity) (ALERTS{{alertstate="firing", slo="{spec.name}", link="$link"}})', "")],
          [(None, "red")], w=24, h=4, runbook_links=True),
    ]


DASHBOARDS = {"executive": executive, "oncall": oncall, "debug": debug, "slo": slo}


def render(config: MonitoringConfig) -> dict[str, str]:
    """File name → JSON text of every dashboard, rendered with ``config`` (runbook links, thresholds)."""
    return {f"{name}.json": json.dumps(make(config), indent=2, sort_keys=True) + "\n" for name, make in DASHBOARDS.items()}
