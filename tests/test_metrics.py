"""Prometheus metrics (docs/metrics.md): the text format, the node's textfile kept by the hooks
and the commands, the controller's textfile kept by rebalance, and ``promtool check metrics``
on every output.

promtool is Debian's ``prometheus`` package (.ci/setup installs it): where it is missing the
promtool checks skip with the reason, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, FrozenSet, Tuple

import pytest

from slurm_mig.core import metrics as m, nodemetrics
from slurm_mig.host.config import load_config
from slurm_mig.node import metrics as node_metrics
from slurm_mig.rebalance import metrics as rb_metrics

import test_hooks
from test_rebalance import cluster, config  # noqa: F401 - fixtures

TEXTFILE_DIR = "/textfile"
METRICS_CONFIG = f'[metrics]\ntextfile = "{TEXTFILE_DIR}/slurm_mig.prom"\n'

Sample = Tuple[str, FrozenSet[Tuple[str, str]]]
_LINE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Dict[Sample, float]:
    """Samples of a text exposition (our own output: one sample a line, no timestamps)."""
    out: Dict[Sample, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        found = _LINE.fullmatch(line)
        assert found, f"not a sample line without timestamp: {line!r}"
        labels = frozenset((k, bytes(v, "utf-8").decode("unicode_escape"))
                           for k, v in _LABEL.findall(found.group(2) or ""))
        out[(found.group(1), labels)] = float(found.group(3))
    return out


def value(samples: Dict[Sample, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def promtool_check(text: str) -> None:
    """``promtool check metrics`` accepts ``text`` (lint included); skip without promtool."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing under CI: .ci/setup installs Debian's prometheus")
        pytest.skip("promtool not installed (Debian package prometheus; .ci/setup installs it)")
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), text


# ----------------------------------------------------------------------------- the format


def test_label_values_and_help_are_escaped():
    fam = m.Family("slurm_mig_x", m.GAUGE, 'help with \\ and\nnewline',
                   [({"a": 'q"uote\\back\nline'}, 1)])
    text = m.render([fam])
    assert text == ('# HELP slurm_mig_x help with \\\\ and\\nnewline\n'
                    '# TYPE slurm_mig_x gauge\n'
                    'slurm_mig_x{a="q\\"uote\\\\back\\nline"} 1\n')
    assert value(parse(text), "slurm_mig_x", a='q"uote\\back\nline') == 1
    promtool_check(text)


def test_values_are_written_as_go_parses_them():
    assert [m.format_value(v) for v in (3, 2.0, 0.25, math.inf, -math.inf, True, 1e20)] == [
        "3", "2", "0.25", "+Inf", "-Inf", "1", "1e+20"]
    assert m.format_value(math.nan) == "NaN"


def test_histogram_buckets_are_cumulative_and_end_with_inf_equal_to_count():
    series: dict = {}
    for v in (0.005, 0.02, 0.02, 0.3, 7, 1000):
        m.observe(series, "slurm_mig_t_seconds", {"hook": "prolog"}, v, m.HOOK_BUCKETS)
    text = m.render(m.families_from(series, {"slurm_mig_t_seconds": (m.HISTOGRAM, "t")}))
    s = parse(text)
    les = [m.format_value(b) for b in m.HOOK_BUCKETS] + ["+Inf"]
    counts = [value(s, "slurm_mig_t_seconds_bucket", hook="prolog", le=le) for le in les]
    assert counts == sorted(counts) and counts[0] == 1 and counts[1] == 3
    assert counts[-1] == value(s, "slurm_mig_t_seconds_count", hook="prolog") == 6
    assert value(s, "slurm_mig_t_seconds_sum", hook="prolog") == pytest.approx(1007.345)
    assert "le=\"+Inf\"" in text.splitlines()[-3]
    promtool_check(text)


def test_a_family_without_samples_still_has_help_and_type():
    text = m.render([m.Family("slurm_mig_y_total", m.COUNTER, "y")])
    assert text == "# HELP slurm_mig_y_total y\n# TYPE slurm_mig_y_total counter\n"
    promtool_check(text)


@pytest.mark.parametrize("bad", [
    lambda: m.Family("slurm_mig_runs", m.COUNTER, "a counter without _total"),
    lambda: m.Family("slurm_mig_x_total", m.GAUGE, "a gauge with _total"),
    lambda: m.Family("1bad", m.GAUGE, "name"),
    lambda: m.render([m.Family("slurm_mig_x", m.GAUGE, "x", [({"le": "1"}, 1)])]),
    lambda: m.render([m.Family("slurm_mig_x", m.GAUGE, "x", [({"__a": "1"}, 1)])]),
    lambda: m.render([m.Family("slurm_mig_x", m.GAUGE, "x", [({"a": "1"}, 1), ({"a": "1"}, 2)])]),
    lambda: m.render([m.Family("slurm_mig_x", m.GAUGE, "x"), m.Family("slurm_mig_x", m.GAUGE, "x")]),
    lambda: m.inc({}, "slurm_mig_x_total", (), -1),
])
def test_what_the_format_forbids_is_refused(bad):
    with pytest.raises(m.MetricsError):
        bad()


def test_the_same_values_render_the_same_bytes_in_any_order():
    a = m.Family("slurm_mig_b", m.GAUGE, "b", [({"x": "2"}, 2), ({"x": "1"}, 1)])
    b = m.Family("slurm_mig_a", m.GAUGE, "a", [({"y": "1", "x": "0"}, 3)])
    c = m.Family("slurm_mig_b", m.GAUGE, "b", [({"x": "1"}, 1), ({"x": "2"}, 2)])
    d = m.Family("slurm_mig_a", m.GAUGE, "a", [({"x": "0", "y": "1"}, 3)])
    assert m.render([a, b]) == m.render([d, c])


def test_damaged_kept_series_are_dropped_not_rendered():
    kinds = {"slurm_mig_h_seconds": m.HISTOGRAM, "slurm_mig_c_total": m.COUNTER}
    good = m.new_histogram((1.0,))
    m.histogram_observe(good, 0.5)
    kept = m.clean_series({
        "slurm_mig_h_seconds": {m.label_key({}): good, m.label_key({"a": "1"}): {"le": [1.0]}},
        "slurm_mig_c_total": {m.label_key({}): 3, m.label_key({"a": "1"}): -1, "not a key": 1},
        "unknown_total": {m.label_key({}): 1},
    }, kinds)
    assert kept == {"slurm_mig_h_seconds": {m.label_key({}): good},
                    "slurm_mig_c_total": {m.label_key({}): 3}}


def test_failure_reasons_are_bounded_snake_case_class_names():
    assert nodemetrics.reason_of("InstanceInUse") == "instance_in_use"
    assert nodemetrics.reason_of("LockBusy") == "lock_busy"
    assert nodemetrics.reason_of("internal") == "internal"


# ----------------------------------------------------------------------------- the node


def _textfile(config) -> str:
    return config.metrics.textfile


def _read(path: str) -> Dict[Sample, float]:
    with open(path) as f:
        return parse(f.read())


@pytest.fixture
def mnode(cli, node_config, tmp_path, cpu_squeue):
    """test_hooks.py's node (three A100-40GB, seven 1g.5gb each) with metrics on."""
    yield from test_hooks.simulated_node(cli, node_config, tmp_path, cpu_squeue, METRICS_CONFIG)


def test_metrics_are_off_by_default(node_config, cli):
    config_path = node_config(gpus=("A100-40GB",))
    assert cli("apply", "1g.5gb:7", config=config_path)[0] == 0
    config = load_config(config_path)
    assert config.metrics.textfile == ""
    assert not os.path.exists(config.metrics.state_file)
    code, _, err = cli("metrics", "--textfile", config=config_path)
    assert code == 3 and "metrics.textfile: not set" in err


def test_apply_writes_the_textfile_with_instances_per_profile(mnode):
    s = _read(_textfile(mnode.config))
    for gpu in ("0", "1", "2"):
        assert value(s, "slurm_mig_instances", gpu=gpu, profile="1g.5gb", state="free") == 7
        assert value(s, "slurm_mig_instances", gpu=gpu, profile="1g.5gb", state="busy") == 0
        assert value(s, "slurm_mig_gpu_mig_mode", gpu=gpu, model="A100-40GB") == 1
    assert value(s, "slurm_mig_runs_total", command="apply", result="ok") == 1
    assert value(s, "slurm_mig_last_run_success", command="apply") == 1
    assert value(s, "slurm_mig_layout_changes_total") == 3
    assert value(s, "slurm_mig_instances_created_total") == 21
    assert oct(os.stat(_textfile(mnode.config)).st_mode & 0o777) == "0o644"


def test_a_failed_apply_is_counted_and_a_bad_layout_is_not(mnode, cli, monkeypatch):
    from slurm_mig.core.errors import GpuError
    from slurm_mig.node import apply as apply_mod

    assert cli("apply", "bogus", config=mnode.config_path)[0] == 2

    def broken(*args, **kwargs):
        raise GpuError("the driver said no")
    monkeypatch.setattr(apply_mod, "apply_node", broken)
    assert cli("apply", "7g.40gb@0", "--gpu", "0", config=mnode.config_path)[0] == 4
    s = _read(_textfile(mnode.config))
    assert value(s, "slurm_mig_runs_total", command="apply", result="failed") == 1
    assert value(s, "slurm_mig_runs_total", command="apply", result="ok") == 1
    assert value(s, "slurm_mig_last_run_success", command="apply") == 0


def test_a_dry_run_writes_no_metrics(mnode, cli):
    before = open(_textfile(mnode.config)).read()
    assert cli("apply", "7g.40gb@0", "--gpu", "0", "--dry-run", config=mnode.config_path)[0] == 0
    assert open(_textfile(mnode.config)).read() == before


def test_counters_survive_across_processes(mnode):
    env = dict(os.environ, SLURM_MIG_CONFIG=mnode.config_path)
    for layout in ("7g.40gb@0", "1g.5gb:7"):
        proc = subprocess.run([sys.executable, "-m", "slurm_mig", "apply", layout, "--gpu", "1"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    s = _read(_textfile(mnode.config))
    assert value(s, "slurm_mig_runs_total", command="apply", result="ok") == 3
    assert value(s, "slurm_mig_layout_changes_total") == 5
    assert value(s, "slurm_mig_instances_destroyed_total") == 8  # 7 x 1g.5gb, then the 7g.40gb
    assert value(s, "slurm_mig_instances_created_total") == 29
    assert value(s, "slurm_mig_instances", gpu="1", profile="1g.5gb", state="free") == 7


def test_hooks_write_their_histogram_on_the_full_and_the_fast_path(mnode, capsys):
    from slurm_mig.hooks import fast as hookfast, run as hooks

    def hook(which, env):
        code = hooks.run_hook(which, dict(env, **{hookfast.REPORT_ENV: "1"}), proc_root=mnode.proc)
        return code, capsys.readouterr().err

    code, err = hook("prolog", mnode.env("41", "0,8"))
    assert code == 0 and "full path (no config cache" in err, err
    s = _read(_textfile(mnode.config))
    assert value(s, "slurm_mig_hook_duration_seconds_count", hook="prolog", path="full") == 1
    assert value(s, "slurm_mig_instances", gpu="0", profile="1g.5gb", state="busy") == 1
    assert value(s, "slurm_mig_instances", gpu="1", profile="1g.5gb", state="busy") == 1
    assert sum(v for (name, labels), v in s.items()
               if name == "slurm_mig_instance_jobs" and ("gpu", "0") in labels) == 1
    assert hook("epilog", mnode.env("41")) == (0, "slurm-mig epilog: job 41: fast path\n")
    assert hook("prolog", mnode.env("42", "3")) == (0, "slurm-mig prolog: job 42: fast path\n")
    s = _read(_textfile(mnode.config))
    assert value(s, "slurm_mig_hook_duration_seconds_count", hook="epilog", path="fast") == 1
    assert value(s, "slurm_mig_hook_duration_seconds_count", hook="prolog", path="fast") == 1
    assert value(s, "slurm_mig_hook_duration_seconds_bucket", hook="prolog", path="fast",
                 le="+Inf") == 1
    assert value(s, "slurm_mig_instances", gpu="0", profile="1g.5gb", state="busy") == 1
    assert value(s, "slurm_mig_instances", gpu="1", profile="1g.5gb", state="busy") == 0


def test_a_subprocess_hook_counts_into_the_same_state(mnode):
    for job, gpus in (("51", "2"), ("52", "4")):
        proc = test_hooks.run_sub("prolog", mnode.env(job, gpus))
        assert (proc.returncode, proc.stderr) == (0, "")
    s = _read(_textfile(mnode.config))
    counts = [value(s, "slurm_mig_hook_duration_seconds_count", hook="prolog", path=p)
              for p in ("full", "fast")]
    assert counts == [1, 1]


def test_a_failed_hook_is_counted_by_reason(mnode, capsys):
    from slurm_mig.hooks import run as hooks

    assert hooks.run_hook("prolog", mnode.env("60", "5"), proc_root=mnode.proc) == 0
    assert hooks.run_hook("prolog", mnode.env("61", "5"), proc_root=mnode.proc) == 5
    capsys.readouterr()
    s = _read(_textfile(mnode.config))
    assert value(s, "slurm_mig_hook_failures_total", hook="prolog", reason="instance_refused") == 1


def test_a_textfile_that_cannot_be_written_leaves_the_hook_exit_0(mnode, capsys, tmp_path):
    from slurm_mig.hooks import fast as hookfast, run as hooks

    blocker = tmp_path / "host" / "textfile"
    shutil.rmtree(blocker)
    blocker.write_text("a file where the textfile's directory should be\n")
    for job, want in (("70", "full path"), ("71", "fast path")):
        env = dict(mnode.env(job, "6" if job == "70" else "1"), **{hookfast.REPORT_ENV: "1"})
        assert hooks.run_hook("prolog", env, proc_root=mnode.proc) == 0
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert want in lines[0] and len(lines) == 2, err
        assert lines[1].startswith(f"slurm-mig prolog: job {job}: warning: metrics not written ("), err
        assert mnode.record_of(job) is not None
    assert hooks.run_hook("epilog", mnode.env("71"), proc_root=mnode.proc) == 0
    assert "warning: metrics not written" in capsys.readouterr().err


def test_a_command_whose_metrics_fail_still_succeeds_and_says_so(mnode, cli, tmp_path):
    blocker = tmp_path / "host" / "textfile"
    shutil.rmtree(blocker)
    blocker.write_text("")
    code, out, err = cli("apply", "7g.40gb@0", "--gpu", "2", config=mnode.config_path)
    assert code == 0 and mnode.driver and "did create 7g.40gb" in out
    assert err.startswith("slurm-mig: warning: metrics not written (") and err.count("\n") == 1


def test_the_metrics_command_prints_what_the_textfile_holds(mnode, cli):
    code, out, err = cli("metrics", config=mnode.config_path)
    assert (code, err) == (0, "")
    with open(_textfile(mnode.config)) as f:
        assert parse(out).keys() == parse(f.read()).keys()
    os.unlink(_textfile(mnode.config))
    code, out2, _ = cli("metrics", "--textfile", config=mnode.config_path)
    assert code == 0 and open(_textfile(mnode.config)).read() == out2
    code, out3, _ = cli("--json", "metrics", config=mnode.config_path)
    got = json.loads(out3)
    assert got["textfile"] is None and parse(got["text"]).keys() == parse(out2).keys()
    promtool_check(out2)


def test_every_node_output_passes_promtool(mnode, capsys):
    from slurm_mig.hooks import run as hooks

    hooks.run_hook("prolog", mnode.env("80", "1"), proc_root=mnode.proc)
    hooks.run_hook("prolog", mnode.env("81", "1"), proc_root=mnode.proc)  # refused: a failure
    hooks.run_hook("epilog", mnode.env("80"), proc_root=mnode.proc)
    capsys.readouterr()
    with open(_textfile(mnode.config)) as f:
        text = f.read()
    assert "slurm_mig_hook_failures_total{" in text and "_bucket{" in text
    promtool_check(text)


def test_a_damaged_state_file_starts_the_counters_again(mnode, cli):
    state_file = mnode.config.metrics.state_file
    with open(state_file, "w") as f:
        f.write("{not json")
    assert cli("apply", "7g.40gb@0", "--gpu", "0", config=mnode.config_path)[0] == 0
    s = _read(_textfile(mnode.config))
    assert value(s, "slurm_mig_runs_total", command="apply", result="ok") == 1
    assert json.load(open(state_file))["version"] == nodemetrics.STATE_VERSION


def test_the_docs_list_every_metric():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "metrics.md")) as f:
        doc = f.read()
    names = list(nodemetrics.KEPT) + list(nodemetrics.COMPUTED) + list(rb_metrics.SPECS)
    assert [n for n in names if f"`{n}`" not in doc] == []


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("extra, message", [
    ('[metrics]\ntextfile = "/x/slurm_mig.txt"\n', "reads only *.prom files"),
    ('[metrics]\ntextfile = "/x/.slurm_mig.prom"\n', "reads only *.prom files"),
    ('[metrics]\ntextfile = "relative.prom"\n', "not an absolute path"),
    ('[metrics]\ntextfil = "/x/a.prom"\n', "unknown key 'metrics.textfil'"),
])
def test_bad_metrics_settings_are_config_errors(extra, message):
    from slurm_mig.core.errors import ConfigError
    from slurm_mig.host.config import parse_config

    with pytest.raises(ConfigError) as info:
        parse_config("version = 1\n" + extra, "config.toml")
    assert message in str(info.value)


def test_metrics_paths_follow_the_root_and_the_state_dir():
    from slurm_mig.host.config import parse_config

    c = parse_config('version = 1\n[paths]\nroot = "/r"\nstate_dir = "/s"\n' + METRICS_CONFIG,
                     "config.toml")
    assert c.metrics.textfile == "/r/textfile/slurm_mig.prom"
    assert c.metrics.state_file == "/r/s/metrics.json"
    assert c.metrics.rebalance_state_file == "/r/s/rebalance-metrics.json"
    assert c.metrics.rebalance_textfile == ""


# ----------------------------------------------------------------------------- controller


def _result(changed=2, held=1, finished=2, failed=0, reconfigures=1) -> dict:
    return {"changed": [{"node": f"n{i}"} for i in range(changed)], "resumed": [],
            "finished": [f"n{i}" for i in range(finished)], "failed": [{}] * failed,
            "reconfigures": reconfigures, "hold": {"held": [f"h{i}" for i in range(held)]},
            "plan": {"totals": {"demand_instances": 10, "demand_weight": 55.5,
                                "satisfied_before": 3, "satisfied_after": 9,
                                "weight_before": 10.0, "weight_after": 50.0}}}


def test_a_rebalance_cycle_renders_demand_supply_and_actions():
    from slurm_mig.slurm.model import GresRequest, NodeInfo, PendingJob

    jobs_ = [PendingJob(1, partition=("gpu",), reason="Resources",
                        requests=(GresRequest("1g.10gb", 2),)),
             PendingJob(2, partition=("gpu", "debug"), reason="Resources",
                        requests=(GresRequest("3g.40gb", 1),)),
             PendingJob(3, partition=("gpu",), reason="Resources", requests=(GresRequest(None, 1),))]
    nodes = [NodeInfo("n1", gres={"1g.10gb": 7}, gres_used={"1g.10gb": 3}),
             NodeInfo("n2", gres={"1g.10gb": 2, "3g.40gb": 1, "a100": 1})]
    state = rb_metrics.read("/nonexistent/state.json")
    rb_metrics.record_cycle(state, _result(), 2.5, 1.7e9, jobs_, nodes)
    rb_metrics.record_cycle(state, None, 0.5, 1.7e9 + 60)
    rb_metrics.record_cycle(state, _result(changed=0, held=0, finished=1), 1.0, 1.7e9 + 120, [], nodes)
    s = parse(text := rb_metrics.render(state))
    assert value(s, "slurm_mig_rebalance_cycles_total", result="ok") == 2
    assert value(s, "slurm_mig_rebalance_cycles_total", result="failed") == 1
    assert value(s, "slurm_mig_rebalance_cycle_duration_seconds_count") == 3
    assert value(s, "slurm_mig_rebalance_nodes_total", action="changed") == 2
    assert value(s, "slurm_mig_rebalance_nodes_total", action="drained") == 3
    assert value(s, "slurm_mig_rebalance_nodes_total", action="finished") == 3
    assert value(s, "slurm_mig_rebalance_last_cycle_nodes", action="finished") == 1
    assert value(s, "slurm_mig_rebalance_reconfigures_total") == 2
    assert value(s, "slurm_mig_rebalance_demand_served_instances", when="after") == 9
    assert value(s, "slurm_mig_cluster_instances", type="1g.10gb") == 9
    assert value(s, "slurm_mig_cluster_instances_free", type="1g.10gb") == 6
    assert ("slurm_mig_cluster_instances", frozenset({("type", "a100")})) not in s
    # the last cycle saw no pending job: yesterday's demand is gone, not stale
    assert not [k for k in s if k[0] == "slurm_mig_rebalance_pending_instances"]
    state2 = rb_metrics.read("/nonexistent/state.json")
    rb_metrics.record_cycle(state2, _result(), 2.5, 1.7e9, jobs_, nodes)
    s2 = parse(text2 := rb_metrics.render(state2))
    assert value(s2, "slurm_mig_rebalance_pending_instances", type="1g.10gb", partition="gpu") == 2
    assert value(s2, "slurm_mig_rebalance_pending_instances", type="3g.40gb",
                 partition="debug,gpu") == 1
    assert value(s2, "slurm_mig_rebalance_pending_jobs", type="any", partition="gpu") == 1
    promtool_check(text)
    promtool_check(text2)


def test_rebalance_writes_its_textfile_and_counts_across_runs(config, cluster, tmp_path):
    from slurm_mig.core.errors import SlurmUnreadable
    from slurm_mig.rebalance.cycle import rebalance
    from test_rebalance import Clock, Reader, _run

    textfile = tmp_path / "tf" / "rebalance.prom"
    cfg = config(f'[metrics]\nrebalance_textfile = "{textfile}"\n')
    result = _run(cfg, cluster)
    assert [c["node"] for c in result["changed"]] == ["n1"]
    s = _read(str(textfile))
    assert value(s, "slurm_mig_rebalance_cycles_total", result="ok") == 1
    assert value(s, "slurm_mig_rebalance_last_cycle_nodes", action="changed") == 1
    assert value(s, "slurm_mig_rebalance_pending_instances", type="3g.20gb", partition="gpu") == 1
    assert value(s, "slurm_mig_cluster_instances", type="1g.5gb") == 14
    assert value(s, "slurm_mig_rebalance_demand_served_instances", when="before") == 0
    assert value(s, "slurm_mig_rebalance_demand_served_instances", when="after") == 1
    before = textfile.read_text()
    _run(cfg, cluster, dry_run=True)
    assert textfile.read_text() == before

    class Down(Reader):
        def pending_jobs(self):
            raise SlurmUnreadable("squeue: slurmctld down")
    with pytest.raises(SlurmUnreadable):
        clock = Clock()
        rebalance(cfg, Down(cluster), cluster.client, cluster.channel, clock=clock,
                  sleep=clock.sleep)
    s = _read(str(textfile))
    assert value(s, "slurm_mig_rebalance_cycles_total", result="ok") == 1
    assert value(s, "slurm_mig_rebalance_cycles_total", result="failed") == 1
    assert value(s, "slurm_mig_rebalance_last_cycle_success") == 0
    assert value(s, "slurm_mig_rebalance_pending_instances", type="3g.20gb", partition="gpu") == 1
    promtool_check(textfile.read_text())


def test_rebalance_metrics_that_cannot_be_written_leave_the_cycle_alone(config, cluster, tmp_path,
                                                                       caplog):
    from test_rebalance import _run

    (tmp_path / "tf").write_text("a file where the textfile's directory should be\n")
    cfg = config(f'[metrics]\nrebalance_textfile = "{tmp_path}/tf/rebalance.prom"\n')
    result = _run(cfg, cluster)
    assert [c["node"] for c in result["changed"]] == ["n1"]
    assert any("rebalance metrics not written" in r.getMessage() for r in caplog.records)


def test_the_fast_path_with_metrics_on_still_imports_no_engine(mnode, capsys):
    from slurm_mig.hooks import run as hooks

    assert hooks.run_hook("prolog", mnode.env("90", "0"), proc_root=mnode.proc) == 0  # full
    capsys.readouterr()
    heavy = ("slurm_mig.core.catalog", "slurm_mig.host.config", "slurm_mig.hooks.full",
             "slurm_mig.node.apply", "typing", "dataclasses", "tomllib", "tempfile", "pynvml")
    probe = f"import sys; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    before = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60).stdout
    code = ("import sys; from slurm_mig.hooks.run import main; rc = main(['prolog']); "
            f"print(rc, 'slurm_mig.node.metrics' in sys.modules, "
            f"sorted(m for m in {heavy!r} if m in sys.modules))")
    env = dict(mnode.env("91", "1"), SLURM_MIG_HOOK_REPORT="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.stderr == "slurm-mig prolog: job 91: fast path\n"
    assert proc.stdout == f"0 True {before.strip()}\n"
    s = _read(_textfile(mnode.config))
    assert value(s, "slurm_mig_hook_duration_seconds_count", hook="prolog", path="fast") == 1
