"""The Grafana dashboard etc/grafana/slurm-mig.json (docs/metrics.md, "Grafana dashboard").

Every panel queries only metrics slurm-mig exports: the names are taken from the node's and
the controller's rendered textfiles (slurm_mig.core.nodemetrics, slurm_mig.rebalance.metrics),
so renaming a metric fails here.  Every query is valid PromQL: ``promtool check rules`` (Debian's
``prometheus`` package) parses them all as recording rules; where promtool is missing that
check skips with the reason, except under CI (``CI=true``), where it fails.  A real Prometheus
(tests/promscrape.py) scrapes both rendered textfiles and answers every query; the capacity and
demand panels return the sample values (about 5 s).  Grafana itself is not in Debian and is
not run here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Dict, List, Set, Tuple

import pytest

from slurm_mig.core import metrics as m, nodemetrics
from slurm_mig.rebalance import metrics as rb_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "etc", "grafana", "slurm-mig.json")

#: Grafana's variables, replaced by what Grafana would put there before PromQL sees them.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__interval": "1m", "$__range": "1d",
                     "$instance": ".*"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "sum", "min", "max", "avg", "count", "stddev",
            "stdvar", "topk", "bottomk", "quantile", "count_values", "group", "atan2"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load() -> dict:
    with open(DASHBOARD) as f:
        return json.load(f)


def panels(dash: dict) -> List[dict]:
    out = []
    for p in dash["panels"]:
        out.extend(p.get("panels", ()))  # a collapsed row holds its panels
        if p["type"] != "row":
            out.append(p)
    return out


def exprs(dash: dict) -> List[Tuple[str, str]]:
    """(panel title/refId, expr) of every target."""
    return [(f"{p['title']}/{t['refId']}", t["expr"]) for p in panels(dash) for t in p["targets"]]


def textfiles() -> Tuple[str, str]:
    """The node's and the controller's textfiles as slurm-mig's own modules render them,
    with sample values."""
    node = nodemetrics.new_state()
    nodemetrics.record_hook(node, "prolog", "fast", 0.02, failure="LockBusy")
    nodemetrics.record_run(node, "apply", 1.5, 1.7e9, {})
    nodemetrics.set_inventory(node, [{"index": 0, "model": "A100-SXM4-40GB", "mig": True,
                                      "mig_pending": True,
                                      "instances": [{"gi": 1, "profile": "3g.20gb", "start": 0}]}],
                              1.7e9)
    controller = rb_metrics.read("/nonexistent/rebalance-metrics.json")
    rb_metrics.record_cycle(controller, None, 2.5, 1.7e9)
    from slurm_mig.slurm.model import GresRequest, NodeInfo, PendingJob

    jobs = [PendingJob(1, partition=("gpu",), reason="Resources",
                       requests=(GresRequest("1g.10gb", 2),))]
    nodes = [NodeInfo("n1", gres={"1g.10gb": 7, "3g.20gb": 1}, gres_used={"1g.10gb": 3})]
    result = {"changed": [{"node": "n1"}], "resumed": [], "finished": ["n1"], "failed": [],
              "reconfigures": 1, "hold": {"held": []},
              "plan": {"totals": {"demand_instances": 2, "demand_weight": 2.0,
                                  "satisfied_before": 0, "satisfied_after": 2,
                                  "weight_before": 0.0, "weight_after": 2.0}}}
    rb_metrics.record_cycle(controller, result, 3.0, 1.7e9 + 60, jobs, nodes)
    return m.render(nodemetrics.families(node, {(0, 1): 1})), rb_metrics.render(controller)


def exported() -> Dict[str, str]:
    """Every metric family slurm-mig exports -> its type, from the rendered textfiles."""
    text = "".join(textfiles())
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert len(types) == len(nodemetrics.KEPT) + len(nodemetrics.COMPUTED) + len(rb_metrics.SPECS)
    return types


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?=\s*[{\[)]|\s|$)")


def metric_names(expr: str) -> Set[str]:
    """The metric names a PromQL expression selects: identifiers followed by ``{``, ``[``,
    ``)``, whitespace or the end that are not functions, aggregations or keywords; label
    matchers, strings, durations and grouping label lists are left out."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = _GROUPING.sub(" ", text)
    return {n for n in _IDENT.findall(text) if n.lower() not in KEYWORDS}


def family(name: str, types: Dict[str, str]) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        base = name[:-len(suffix)]
        if name.endswith(suffix) and types.get(base) == m.HISTOGRAM:
            return base
    return name


def test_metric_names_are_parsed_out_of_promql():
    expr = ('histogram_quantile(0.99, sum by (le, hook) (rate(a_seconds_bucket{x="y)", '
            'instance=~"$instance"}[5m]))) / on (type) group_left sum without (gpu) (b) '
            '+ c_total offset 1h or vector(0) > bool 1e3')
    assert metric_names(expr) == {"a_seconds_bucket", "b", "c_total"}
    types = {"a_seconds": m.HISTOGRAM, "b_count": m.GAUGE}
    assert family("a_seconds_bucket", types) == "a_seconds"
    assert family("b_count", types) == "b_count"  # not a histogram's: stays itself


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_datasource_variable():
    dash = load()
    assert 36 <= dash["schemaVersion"] <= 41 and dash["uid"] == "slurm-mig"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in dash["panels"]] + [q["id"] for p in dash["panels"]
                                               for q in p.get("panels", ())]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]


def test_the_dashboard_has_the_panels_docs_metrics_md_describes():
    titles = {p["title"] for p in panels(load())}
    wanted = {"MIG capacity by profile", "Pending demand vs supply per type",
              "Rebalance activity", "Node drains", "Hook latency", "Plan quality"}
    assert wanted <= titles
    with open(os.path.join(ROOT, "docs", "metrics.md")) as f:
        doc = f.read()
    assert [t for t in sorted(titles) if f"**{t}**" not in doc] == []
    hook = next(p for p in panels(load()) if p["title"] == "Hook latency")
    assert all("histogram_quantile(" in t["expr"]
               and "slurm_mig_hook_duration_seconds_bucket" in t["expr"] for t in hook["targets"])


def test_every_query_uses_only_metrics_slurm_mig_exports():
    types = exported()
    dash = load()
    unknown = {}
    used = set()
    for where, expr in exprs(dash):
        names = {family(n, types) for n in metric_names(expr)}
        assert names, f"{where}: no metric in {expr!r}"
        used |= names
        if names - set(types):
            unknown[where] = sorted(names - set(types))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            found = re.fullmatch(r"label_values\((\w+), *\w+\)", v["definition"])
            assert found and found.group(1) in types, v["definition"]
    assert unknown == {}
    # the dashboard shows both sides: the node's and the controller's metrics
    assert used & set(nodemetrics.COMPUTED) and used & set(rb_metrics.SPECS)


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing under CI: .ci/setup installs Debian's prometheus")
        pytest.skip("promtool not installed (Debian package prometheus; .ci/setup installs it)")
    return promtool


def promql(expr: str) -> str:
    """``expr`` as Prometheus gets it from Grafana: the variables replaced."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr!r}"
    return expr


def test_every_query_is_valid_promql(tmp_path):
    promtool = _promtool()
    rules = [{"record": f"slurm_mig:grafana_panel:{i}", "expr": promql(e)}
             for i, (_, e) in enumerate(exprs(load()))]
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "grafana", "rules": rules}]}))  # JSON is YAML
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout


def test_promtool_refuses_a_broken_query(tmp_path):
    # the check above can fail: a query with a syntax error is refused
    promtool = _promtool()
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "g", "rules": [
        {"record": "x:y:z", "expr": "sum by (profile) (slurm_mig_instances"}]}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0


def test_prometheus_answers_every_query_and_the_capacity_panel_has_data(tmp_path):
    """A real Prometheus scrapes both rendered textfiles through a real node_exporter
    (tests/promscrape.py; skips where either is missing, fails under CI) and runs every query."""
    from promscrape import Scrape

    textdir = tmp_path / "textfile"
    textdir.mkdir()
    node, controller = textfiles()
    (textdir / "slurm_mig.prom").write_text(node)
    (textdir / "slurm_mig_rebalance.prom").write_text(controller)
    s = Scrape(str(textdir), str(tmp_path))
    try:
        capacity = s.wait_for("Prometheus answers the capacity panel", lambda: s.by(
            "profile", promql(next(e for w, e in exprs(load())
                                   if w == "MIG capacity by profile/A"))))
        assert capacity == {"3g.20gb": 1.0}
        demand = {w: e for w, e in exprs(load())}
        assert s.by("type", promql(demand["Pending demand vs supply per type/A"])) == {
            "1g.10gb": 2.0}
        for where, expr in exprs(load()):
            s.query(promql(expr))  # asserts Prometheus' status is success
    finally:
        s.stop()
