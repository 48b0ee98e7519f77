"""Every metric a dashboard or alarm names is one the service exports.

Grafana (docker/grafana/dashboards/aetherstream.json) queries the Prometheus names. The CFN
template (deploy/ecs/template.yaml) queries the CloudWatch mirror, whose contract is: the
Prometheus name without ``aetherstream_`` and without ``_total``; dimensions Application,
Stream, plus each Prometheus label capitalised (shard -> Shard). AWS service metrics are
checked against the short lists below, taken from the AWS metric references.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics import MetricWrapperBase

from consumer.metrics import registry
from consumer.metrics.registry import METRIC_NAMES, SAMPLE_NAMES

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker/grafana/dashboards/aetherstream.json"
DATASOURCES = ROOT / "docker/grafana/provisioning/datasources/prometheus.yml"
TEMPLATE = ROOT / "deploy/ecs/template.yaml"

# AWS/Kinesis stream metrics, AWS/Lambda function metrics, ECS Container Insights.
AWS_METRICS = {
    "AWS/Kinesis": {"IncomingRecords", "IncomingBytes", "PutRecords.ThrottledRecords",
                    "PutRecords.Records", "GetRecords.IteratorAgeMilliseconds",
                    "GetRecords.Records", "ReadProvisionedThroughputExceeded",
                    "WriteProvisionedThroughputExceeded"},
    "AWS/Lambda": {"Errors", "Throttles", "Duration", "Invocations", "IteratorAge",
                   "ConcurrentExecutions"},
    "ECS/ContainerInsights": {"RunningTaskCount", "DesiredTaskCount", "CpuUtilized",
                              "MemoryUtilized"},
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def cloudwatch_name(prometheus_name: str) -> str:
    return prometheus_name.removeprefix("aetherstream_").removesuffix("_total")


def _labels() -> dict[str, tuple[str, ...]]:
    """Label names per exported metric, read off the registry's metric objects."""
    out: dict[str, tuple[str, ...]] = {}
    for obj in vars(registry).values():
        if isinstance(obj, MetricWrapperBase):
            # _name/_labelnames: prometheus_client keeps no public accessor for these.
            full = obj._name + ("_total" if obj._type == "counter" else "")
            out[full] = tuple(obj._labelnames)
    return out


LABELS = _labels()
PROM_SAMPLES = set(METRIC_NAMES) | set(SAMPLE_NAMES)  # SAMPLE_NAMES adds histogram series
CW_NAMES = {cloudwatch_name(n): n for n in METRIC_NAMES}


def test_registry_labels_cover_every_exported_name() -> None:
    assert set(LABELS) == set(METRIC_NAMES)


# --- Grafana ---------------------------------------------------------------------------------
def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _exprs(doc: dict[str, Any]) -> Iterator[str]:
    for panel in _panels(doc):
        for target in panel.get("targets", []):
            yield target["expr"]
    for var in doc.get("templating", {}).get("list", []):
        query = var.get("query")
        yield query["query"] if isinstance(query, dict) else str(query or "")


PROM_IDENT = re.compile(r"\baetherstream_[a-z0-9_]+")


def test_dashboard_schema_imports_unchanged() -> None:
    import yaml

    doc = _dashboard()
    assert doc["uid"] and doc["title"] and isinstance(doc["schemaVersion"], int)
    assert "id" not in doc or doc["id"] is None  # an id would clash with the importing Grafana
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    ids = [p["id"] for p in _panels(doc)]
    assert len(ids) == len(set(ids))
    for panel in _panels(doc):
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y"))
        assert pos["w"] > 0 and pos["x"] + pos["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"]
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"]
            assert target["datasource"]["uid"] == uid


def test_dashboard_names_only_exported_metrics_and_all_of_them() -> None:
    used: set[str] = set()
    for expr in _exprs(_dashboard()):
        names = set(PROM_IDENT.findall(expr))
        assert names, f"expression names no aetherstream metric: {expr}"
        unknown = names - PROM_SAMPLES
        assert not unknown, f"{expr}: not exported: {sorted(unknown)}"
        used |= {n.removesuffix(s) for n in names for s in HISTOGRAM_SUFFIXES if n.endswith(s)}
        used |= names
    assert set(METRIC_NAMES) <= used, f"no panel for {sorted(set(METRIC_NAMES) - used)}"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool parses every expression (as a recording rule), with Grafana's variables
    replaced by what Grafana would send. Skipped where promtool is not installed (Debian:
    apt-get install prometheus)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    exprs = [e.replace("$__rate_interval", "1m").replace("$shard", ".*")
             for e in _exprs(_dashboard()) if not e.startswith("label_values(")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"check:expr{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_prometheus_config_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    res = subprocess.run([promtool, "check", "config", str(ROOT / "docker/prometheus.yml")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_sections() -> None:
    rows = {p["title"].split()[0].lower() for p in _dashboard()["panels"] if p["type"] == "row"}
    assert {"lag", "throughput", "windows", "sinks", "quarantine", "checkpoints"} <= rows


# --- CloudFormation ------------------------------------------------------------------------
SCHEMA = re.compile(
    r"\b(?:SUM|MAX|MIN|AVG|COUNT)\((\w+)\)\s+FROM\s+SCHEMA\(\s*\"([^\"]+)\"\s*((?:,\s*\w+\s*)*)\)")
OUR_NAMESPACE = "${MetricsNamespace}"


def _template() -> Any:
    return cfn_yaml.load(str(TEMPLATE))


def _text(value: Any) -> str:
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return str(sub if isinstance(sub, str) else sub[0])
    if isinstance(value, dict) and value.get("Ref") == "MetricsNamespace":
        return OUR_NAMESPACE
    return str(value)


def _metric_refs() -> Iterator[tuple[str, str, tuple[str, ...] | None, str]]:
    """(namespace, metric, dimension names or None, where) for everything the template reads."""
    resources = _template()["Resources"]
    for name, res in resources.items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::CloudWatch::Alarm" and "MetricName" in props:
            dims = tuple(d["Name"] for d in props.get("Dimensions", []))
            yield _text(props["Namespace"]), props["MetricName"], dims, name
        spec = props.get("TargetTrackingScalingPolicyConfiguration", {})
        queries = list(props.get("Metrics", [])) + list(
            spec.get("CustomizedMetricSpecification", {}).get("Metrics", []))
        for q in queries:
            yield from _query_refs(q, name)
    body = _text(resources["Dashboard"]["Properties"]["DashboardBody"])
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "0", body.replace(OUR_NAMESPACE, "OURS")))
    for widget in widgets["widgets"]:
        for line in widget.get("properties", {}).get("metrics", []):
            if isinstance(line[0], dict):
                yield from _insights(line[0]["expression"], "Dashboard")
            else:
                plain = [x for x in line if isinstance(x, str)]
                yield plain[0], plain[1], tuple(plain[2::2]), "Dashboard"


def _query_refs(q: Any, where: str) -> Iterator[tuple[str, str, tuple[str, ...] | None, str]]:
    if "MetricStat" in q:
        metric = q["MetricStat"]["Metric"]
        dims = tuple(d["Name"] for d in metric.get("Dimensions", []))
        yield _text(metric["Namespace"]), metric["MetricName"], dims, where
    elif "SCHEMA" in _text(q.get("Expression", "")):
        yield from _insights(_text(q["Expression"]), where)


def _insights(expr: str, where: str) -> Iterator[tuple[str, str, tuple[str, ...] | None, str]]:
    found = SCHEMA.findall(expr)
    assert found, f"{where}: unparsed Metrics Insights query {expr}"
    for metric, namespace, dims in found:
        namespace = OUR_NAMESPACE if namespace in ("OURS", OUR_NAMESPACE) else namespace
        yield namespace, metric, tuple(d.strip() for d in dims.split(",") if d.strip()), where


def _expected_dims(cw_metric: str) -> tuple[str, ...]:
    labels = LABELS[CW_NAMES[cw_metric]]
    return tuple(sorted(("Application", "Stream", *(n[:1].upper() + n[1:] for n in labels))))


def test_template_names_only_exported_metrics() -> None:
    refs = list(_metric_refs())
    assert refs
    for namespace, metric, dims, where in refs:
        if namespace == OUR_NAMESPACE:
            assert metric in CW_NAMES, f"{where}: {metric} is not exported"
            # Metrics Insights' SCHEMA must list the exact dimension set to match anything.
            assert dims is not None and tuple(sorted(dims)) == _expected_dims(metric), where
        else:
            assert metric in AWS_METRICS.get(namespace, set()), f"{where}: {namespace} {metric}"


def test_template_covers_the_required_signals() -> None:
    alarmed = {(ns, m) for ns, m, _, where in _metric_refs() if where != "Dashboard"}
    shown = {(ns, m) for ns, m, _, where in _metric_refs() if where == "Dashboard"}
    required = {
        ("AWS/Kinesis", "PutRecords.ThrottledRecords"),
        ("AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds"),
        ("AWS/Lambda", "Errors"), ("AWS/Lambda", "Throttles"), ("AWS/Lambda", "Duration"),
        (OUR_NAMESPACE, "sink_batches"), (OUR_NAMESPACE, "records_quarantined"),
        (OUR_NAMESPACE, "millis_behind_latest"), (OUR_NAMESPACE, "checkpoints"),
    }
    assert required <= alarmed, sorted(required - alarmed)
    assert required <= shown, sorted(required - shown)


def test_cloudwatch_mirror_follows_the_naming_contract() -> None:
    from consumer.metrics.cloudwatch import DeltaTracker

    reg = CollectorRegistry()
    Counter("aetherstream_sink_batches_total", "x", ("sink", "outcome"),
            registry=reg).labels("s3", "ok").inc()
    datums, _ = DeltaTracker({"Application": "a", "Stream": "s"}).datums(reg.collect())
    assert [(d.name, [k for k, _ in d.dimensions]) for d in datums] == [
        ("sink_batches", ["Application", "Stream", "Outcome", "Sink"])]
