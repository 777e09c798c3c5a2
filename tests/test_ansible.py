"""The Ansible role (etc/ansible/roles/slurm_mig) run for real, into a temp root.

``ansible-playbook -c local -i localhost,`` installs this checkout (a copy of its package
files) into a venv under the root,
with every path of the role pointed there (no real /etc, /usr/local or systemd) and the
simulator as the GPU backend: ``--check --diff`` on the fresh root first (it must predict the
first run's changed tasks and write nothing), then the first run (changes, one reconfigure),
then a second run (``changed=0``, no reconfigure).  The reconfigure handler runs a recorder
script.  Then the installed ``slurm-mig`` runs with the installed config, a layout change
makes a third run rewrite gres.conf and the node include and reconfigure once more, the
installed hooks run a job, and a node-only run with cron.  The tests after the fixture's
three runs build on each other's state, in file order.
``ansible-lint`` (production profile) checks the role and the example playbook first.

Select with ``-m ansible``.  The ``ansible`` extra installs ansible-core and ansible-lint
(``pip install -e '.[test,ansible]'``); without them the tests skip, unless
SLURM_MIG_REQUIRE_ANSIBLE=1 (``.ci/run`` sets it), which makes them fail.
About 90 s on 2 cores, most of it the venv's pip install and five playbook runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ansible,
              pytest.mark.skipif(sys.version_info < (3, 11),
                                 reason="ansible-core 2.19 and ansible-lint need Python 3.11")]

REPO = pathlib.Path(__file__).resolve().parent.parent
ANSIBLE_DIR = REPO / "etc" / "ansible"
BIN = pathlib.Path(sys.executable).parent
NODE = "gpu01"
#: The header lines `ansible-playbook`'s default output starts each task and handler with.
TASK = re.compile(r"^(TASK|RUNNING HANDLER) \[slurm_mig : (?P<name>.+?)\] \*+$")
STATUS = re.compile(r"^(?P<status>ok|changed|skipping|failed|fatal): \[localhost\]")
RECAP = re.compile(r"^localhost\s+: ok=(\d+)\s+changed=(?P<changed>\d+)\s+unreachable=0\s+failed=(?P<failed>\d+)")


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        why = f"{path} missing: install the ansible extra (pip install -e '.[test,ansible]')"
        if os.environ.get("SLURM_MIG_REQUIRE_ANSIBLE") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return str(path)


def _env(tmp: pathlib.Path) -> dict:
    env = dict(os.environ)
    env.update(ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_HOME=str(tmp / "ansible-home"), ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"),
               ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-remote"), ANSIBLE_RETRY_FILES_ENABLED="0",
               XDG_CACHE_HOME=str(tmp / "cache"), PY_COLORS="0", NO_COLOR="1")
    env.pop("SLURM_MIG_CONFIG", None)
    return env


def _changed_tasks(output: str) -> dict:
    """{task or handler name: set of statuses} from ansible-playbook's default output."""
    seen: dict = {}
    name = None
    for line in output.splitlines():
        head = TASK.match(line)
        if head:
            name = head["name"]
            seen.setdefault(name, set())
            continue
        status = STATUS.match(line)
        if status and name is not None:
            seen[name].add(status["status"])
    return seen


def _recap(output: str) -> dict:
    found = [RECAP.match(l) for l in output.splitlines() if RECAP.match(l)]
    assert len(found) == 1, output[-3000:]
    return {"changed": int(found[0]["changed"]), "failed": int(found[0]["failed"])}


class Site:
    """A temp root shaped like a Debian host with Slurm's files, and the role's variables for it."""

    def __init__(self, tmp: pathlib.Path):
        self.tmp = tmp
        self.root = tmp / "root"
        for d in ("etc/slurm", "etc/default", "etc/systemd/system", "etc/cron.d", "usr/local/sbin"):
            (self.root / d).mkdir(parents=True)
        (self.root / "etc/slurm/slurm.conf").write_text("ClusterName=ansible-test\n")
        (self.root / "etc/slurm/cgroup.conf").write_text("CgroupPlugin=autodetect\n")
        self.calls = tmp / "reconfigure.calls"
        self.recorder = tmp / "reconfigure-recorder"
        self.recorder.write_text(f'#!/bin/sh\necho "reconfigure $*" >> {self.calls}\n')
        self.recorder.chmod(0o755)
        r = self.root
        # The checkout's package files, copied: pip building in the checkout itself would leave
        # setuptools' build/ there, whose stale files later installs would pick up.
        self.source = tmp / "src"
        shutil.copytree(REPO / "slurm_mig", self.source / "slurm_mig",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, self.source / name)
        self.vars = {
            "ansible_python_interpreter": sys.executable,
            "slurm_mig_package": str(self.source),
            "slurm_mig_python": sys.executable,
            "slurm_mig_prefix": f"{r}/opt/slurm-mig",
            "slurm_mig_etc_dir": f"{r}/etc/slurm-mig",
            "slurm_mig_default_file": f"{r}/etc/default/slurm-mig",
            "slurm_mig_slurm_conf_dir": f"{r}/etc/slurm",
            "slurm_mig_systemd_dir": f"{r}/etc/systemd/system",
            "slurm_mig_cron_dir": f"{r}/etc/cron.d",
            "slurm_mig_sbin_dir": f"{r}/usr/local/sbin",
            "slurm_mig_state_dir": f"{r}/var/lib/slurm-mig",
            "slurm_mig_run_dir": f"{r}/run/slurm-mig",
            "slurm_mig_systemd_manage": False,
            "slurm_mig_node": True,
            "slurm_mig_controller": True,
            "slurm_mig_node_name": NODE,
            "slurm_mig_backend": "sim",
            "slurm_mig_sim_gpus": ["A100-40GB", "A100-40GB"],
            "slurm_mig_layout_default": "1g.5gb:7",
            "slurm_mig_layout_gpus": {1: "3g.20gb:2"},
            "slurm_mig_rebalance_enabled": True,
            "slurm_mig_rebalance_floor": {"1g.5gb": 2},
            "slurm_mig_kill_grace": 3,
            "slurm_mig_reconfigure_command": [str(self.recorder), "--from-config"],
            "slurm_mig_handler_reconfigure_command": [str(self.recorder), "--from-ansible"],
        }
        self.vars_file = tmp / "vars.json"
        self.vars_file.write_text(json.dumps(self.vars))
        self.playbook = tmp / "site.yml"
        self.playbook.write_text("- name: Install slurm-mig\n  hosts: all\n  gather_facts: false\n"
                                 "  roles:\n    - slurm_mig\n")
        self.config = self.root / "etc/slurm-mig/config.toml"
        self.slurm_mig = self.root / "opt/slurm-mig/venv/bin/slurm-mig"

    def playbook_run(self, *extra: str) -> str:
        proc = subprocess.run([_tool("ansible-playbook"), "-c", "local", "-i", "localhost,",
                               "-e", f"@{self.vars_file}", str(self.playbook), *extra],
                              cwd=self.tmp, env=_env(self.tmp), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        return proc.stdout

    def reconfigures(self) -> list:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def files(self) -> list:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))

    def installed(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(_env(self.tmp), SLURM_MIG_CONFIG=str(self.config))
        return subprocess.run([str(self.slurm_mig), *args], env=env, capture_output=True, text=True,
                              timeout=120)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Check mode on the fresh root, the first run, the second run; their outputs."""
    _tool("ansible-playbook")
    s = Site(tmp_path_factory.mktemp("ansible"))
    before = s.files()
    s.check = s.playbook_run("--check", "--diff")
    s.after_check = s.files()
    s.first = s.playbook_run()
    s.reconfigures_first = s.reconfigures()
    s.second = s.playbook_run()
    s.reconfigures_second = s.reconfigures()[len(s.reconfigures_first):]
    s.before = before
    return s


def test_role_and_example_playbook_pass_ansible_lint_production_profile(tmp_path):
    proc = subprocess.run([_tool("ansible-lint"), "--offline", "--profile", "production", "--nocolor",
                           "roles/slurm_mig", "site.yml"],
                          cwd=ANSIBLE_DIR, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout


def test_check_mode_writes_nothing(site):
    assert site.after_check == site.before


def test_check_mode_predicts_the_first_runs_changed_tasks(site):
    check, first = _changed_tasks(site.check), _changed_tasks(site.first)
    changed = {name for name, st in first.items() if "changed" in st}
    predicted = {name for name, st in check.items() if "changed" in st}
    handler = "Reconfigure Slurm"
    assert "Install slurm-mig into the venv" in changed
    assert "Write this node's gres.conf lines and its Gres= in the node include" in changed
    # The handler's command is not run in check mode; that it was notified is the prediction.
    assert predicted == changed - {handler}
    assert handler in check and check[handler] == {"skipping"}


def test_first_run_changes_and_reconfigures_slurm_once(site):
    recap = _recap(site.first)
    assert recap["failed"] == 0 and recap["changed"] > 10
    assert site.reconfigures_first == ["reconfigure --from-ansible"]


def test_second_run_changes_nothing_and_does_not_reconfigure(site):
    assert _recap(site.second) == {"changed": 0, "failed": 0}
    assert site.reconfigures_second == []


def test_role_installs_every_piece_where_the_variables_say(site):
    r = site.root
    for hook in ("prolog.d", "epilog.d", "taskprolog.d"):
        path = r / "etc/slurm" / hook / "50-slurm-mig"
        assert path.read_text() == (REPO / hook / "50-slurm-mig").read_text()
        assert path.stat().st_mode & 0o777 == 0o755
    defaults = (r / "etc/default/slurm-mig").read_text().splitlines()
    assert f"SLURM_MIG_PYTHON={r}/opt/slurm-mig/venv/bin/python" in defaults
    assert f"SLURM_MIG_CONFIG={site.config}" in defaults
    slurm_conf = (r / "etc/slurm/slurm.conf").read_text()
    assert slurm_conf.startswith("ClusterName=ansible-test\n")
    assert f"Prolog={r}/etc/slurm/prolog.d/*\n" in slurm_conf
    assert f"Include {r}/etc/slurm/slurm-mig-nodes.conf\n" in slurm_conf
    assert "ConstrainDevices=yes\n" in (r / "etc/slurm/cgroup.conf").read_text()
    unit = (r / "etc/systemd/system/slurm-mig-rebalance.service").read_text()
    assert f"ExecStart={r}/opt/slurm-mig/venv/bin/slurm-mig rebalance\n" in unit
    assert (r / "etc/systemd/system/slurm-mig-node.timer").exists()
    assert os.readlink(r / "usr/local/sbin/slurm-mig") == str(site.slurm_mig)
    assert (r / "usr/local/sbin/slurm-mig-reconfigure").stat().st_mode & 0o111
    assert not (r / "etc/cron.d/slurm-mig").exists()  # systemd timers chosen


def test_installed_slurm_mig_runs_with_the_installed_config(site):
    version = site.installed("--version")
    assert version.returncode == 0 and version.stdout.startswith("slurm-mig, version ")
    status = site.installed("--json", "status")
    assert status.returncode == 0, status.stderr
    result = json.loads(status.stdout)
    assert result["backend"] == "sim"
    assert [g["model"] for g in result["gpus"]] == ["A100-40GB", "A100-40GB"]
    gres = site.installed("--json", "gres-conf")
    assert gres.returncode == 0 and json.loads(gres.stdout)["path"] == str(site.root / "etc/slurm/gres.conf")


def test_rerun_after_a_layout_change_rewrites_gres_files_and_reconfigures_once(site):
    applied = site.installed("apply", "1g.5gb:7", "--gpu", "0")
    assert applied.returncode == 0, applied.stderr
    calls = len(site.reconfigures())
    out = site.playbook_run()
    changed = {name for name, st in _changed_tasks(out).items() if "changed" in st}
    assert changed == {"Write this node's gres.conf lines and its Gres= in the node include",
                       "Reconfigure Slurm"}
    assert site.reconfigures()[calls:] == ["reconfigure --from-ansible"]
    include = (site.root / "etc/slurm/slurm-mig-nodes.conf").read_text()
    assert f"NodeName={NODE} Gres=gpu:1g.5gb:7\n" in include
    gres = (site.root / "etc/slurm/gres.conf").read_text()
    assert len([l for l in gres.splitlines() if l.startswith(f"NodeName={NODE} ")]) == 7


def test_installed_hooks_run_a_job_with_the_installed_defaults(site):
    """After the layout change above: the installed prolog, TaskProlog and epilog, with only
    the environment slurmd gives them and the installed /etc/default/slurm-mig."""
    r, job = site.root, {"SLURM_JOB_ID": "41", "SLURM_JOB_GPUS": "0", "SLURMD_NODENAME": NODE,
                         "SLURM_JOB_UID": "0", "SLURM_JOB_USER": "root"}
    defaults = str(r / "etc/default/slurm-mig")

    def hook(kind: str, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(r / "etc/slurm" / kind / "50-slurm-mig"), *args], env=env,
                              capture_output=True, text=True, timeout=120)

    prolog = hook("prolog.d", SLURM_MIG_DEFAULTS=defaults, **job)
    assert prolog.returncode == 0, prolog.stderr
    assert (r / "var/lib/slurm-mig/jobs/41.json").exists()
    task = hook("taskprolog.d", defaults, SLURM_STEP_GPUS="0", SLURM_STEPID="0", **job)
    assert task.returncode == 0 and task.stdout.startswith("export CUDA_VISIBLE_DEVICES=MIG-"), task.stderr
    epilog = hook("epilog.d", SLURM_MIG_DEFAULTS=defaults, **job)
    assert epilog.returncode == 0, epilog.stderr
    assert not (r / "var/lib/slurm-mig/jobs/41.json").exists()


def test_node_only_run_with_cron_installs_only_the_node_cron_line(site):
    """Runs last: the tags select the node's tasks; cron instead of the timers."""
    out = site.playbook_run("--tags", "slurm_mig_node", "-e", "slurm_mig_scheduler=cron",
                            "-e", "slurm_mig_controller=false")
    changed = {name for name, st in _changed_tasks(out).items() if "changed" in st}
    assert changed == {"Install the cron file"}
    assert "Install slurm-mig into the venv" not in _changed_tasks(out)  # not tagged slurm_mig_node
    cron = (site.root / "etc/cron.d/slurm-mig").read_text().splitlines()
    jobs = [l for l in cron if l and not l.startswith("#")]
    assert jobs == [f"* * * * * root {site.slurm_mig} sync --pending 2>&1 | logger -t slurm-mig"]
