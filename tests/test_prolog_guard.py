"""The prolog's guard (slurm_mig/hooks/guard.py): a job slurmd gave no SLURM_JOB_GPUS is
asked about through squeue, and one that asked for gpus is refused (issue 10).

squeue and scontrol are stand-ins (shell scripts that log their argv), so the real
subprocess path runs; what they print is what Slurm prints for each request form: 22.05
spells the tres ``gres:gpu``, 23.02 and later ``gres/gpu`` (``gres_prepend_tres_type``,
docs/slurm-prolog-env.md).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import CPU_JOB_ROW, fake_calls, fake_command
from slurm_mig.change import reasons
from slurm_mig.hooks import guard, run as hooks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: squeue's row (NumNodes|tres-per-job|tres-per-node|tres-per-socket|tres-per-task|) for
#: each way a job asks for gpus, as 22.05 and as 24.11/26.05 print it.
ASKING = {
    "--gres=gpu:1g.10gb:1 (22.05)": "1|N/A|gres:gpu:1g.10gb:1|N/A|N/A|",
    "--gres=gpu:1g.10gb:1 (24.11)": "1|N/A|gres/gpu:1g.10gb:1|N/A|N/A|",
    "--gres=gpu:1 (untyped)": "1|N/A|gres:gpu:1|N/A|N/A|",
    "--gres=gpu (no count)": "1|N/A|gres/gpu|N/A|N/A|",
    "--gpus=1 (one node)": "1|gres/gpu:1|N/A|N/A|N/A|",
    "--gpus=3g.40gb:1 (one node)": "1|gres:gpu:3g.40gb:1|N/A|N/A|N/A|",
    "--gpus-per-task=1 on two nodes": "2|N/A|N/A|N/A|gres/gpu:1|",
    "--gpus-per-socket=1": "1|N/A|N/A|gres/gpu:1|N/A|",
    "--gres=gpu:1 on two nodes": "2|N/A|gres/gpu:1|N/A|N/A|",
    "another gres and a gpu": "1|N/A|gres/shard:2,gres/gpu:1g.10gb:2|N/A|N/A|",
}
NOT_ASKING = {
    "a CPU job": CPU_JOB_ROW,
    "--gres=gpu:0": "1|N/A|gres/gpu:0|N/A|N/A|",
    "another gres only": "1|N/A|gres/shard:2|N/A|N/A|",
    "a gres named like a gpu": "1|N/A|gres/gpux:1|N/A|N/A|",
    "--gpus=2 spread over two nodes": "2|gres/gpu:2|N/A|N/A|N/A|",
}


def fields(row: str) -> list:
    return guard.parse_squeue(row + "\n", "7")[0]


@pytest.mark.parametrize("form", sorted(ASKING))
def test_each_way_of_asking_for_gpus_is_a_request(form):
    assert guard.gpu_request(fields(ASKING[form])) is not None


@pytest.mark.parametrize("form", sorted(NOT_ASKING))
def test_jobs_that_need_no_gpu_on_each_node_are_not_a_request(form):
    assert guard.gpu_request(fields(NOT_ASKING[form])) is None


def test_the_request_names_the_field_and_only_the_gpu_items():
    assert guard.gpu_request(fields(ASKING["another gres and a gpu"])) == \
        "tres-per-node gres/gpu:1g.10gb:2"


def test_squeue_is_asked_only_for_fields_slurmctld_validated():
    argv = guard.squeue_argv("squeue", "812")
    assert argv == ["squeue", "--noheader", "--states=all", "--jobs=812",
                    "--Format=NumNodes:0|,tres-per-job:0|,tres-per-node:0|,tres-per-socket:0|,"
                    "tres-per-task:0|"]


@pytest.fixture
def slurm(tmp_path, node_config):
    """(environment of a CPU-looking job, squeue stand-in maker, scontrol stand-in)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = fake_command(bin_dir / "scontrol", "true")

    def squeue(body: str) -> str:
        return fake_command(bin_dir / "squeue", body)

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SLURMD_NODENAME": "n2",
           "SLURM_JOB_ID": "812", "SLURM_JOB_UID": "1000", "SLURM_MIG_SCONTROL": scontrol,
           "SLURM_MIG_CONFIG": node_config()}
    return env, squeue, scontrol


@pytest.fixture
def no_pauses(monkeypatch):
    monkeypatch.setattr(guard, "PAUSES", (0.0, 0.0))


def hook(env, capsys) -> tuple:
    code = hooks.run_hook("prolog", env)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("form", sorted(ASKING))
def test_a_gpu_job_slurm_gave_no_gpu_is_refused_and_the_node_drained_with_our_reason(
        slurm, capsys, form):
    env, squeue, scontrol = slurm
    env["SLURM_MIG_SQUEUE"] = squeue(f"echo '{ASKING[form]}'")
    code, out, err = hook(env, capsys)
    assert code == 8, err
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("slurm-mig prolog: error: job 812: it asked for gpus (tres-per-")
    assert "but Slurm gave it none (no SLURM_JOB_GPUS)" in err
    assert "drained it with slurm-mig's reason" in err
    (call,) = fake_calls(scontrol)
    assert call[:3] == ["update", "nodename=n2", "state=drain"]
    reason = call[3][len("reason="):]
    assert call[3].startswith("reason=") and "=" not in reason
    assert reasons.parse_reason(reason).kind == reasons.NO_GPUS
    assert reason.startswith("slurm-mig prolog: job 812 asked for gpus (tres-per-")


def test_the_refusal_is_written_to_last_error(slurm, capsys):
    env, squeue, _ = slurm
    env["SLURM_MIG_SQUEUE"] = squeue(f"echo '{ASKING['--gpus=1 (one node)']}'")
    code, _, err = hook(env, capsys)
    assert code == 8
    from slurm_mig.host.config import load_config

    state = load_config(env["SLURM_MIG_CONFIG"]).paths.state_dir
    assert open(os.path.join(state, hooks.LAST_ERROR)).read() == err


def test_a_cpu_job_runs_after_one_question(slurm, capsys):
    env, squeue, scontrol = slurm
    env["SLURM_MIG_SQUEUE"] = squeue(f"echo '{CPU_JOB_ROW}'")
    assert hook(env, capsys) == (0, "", "")
    assert fake_calls(env["SLURM_MIG_SQUEUE"]) == [guard.squeue_argv("x", "812")[1:]]
    assert fake_calls(scontrol) == []


def test_a_job_with_slurm_job_gpus_asks_nothing(slurm, capsys):
    env, squeue, _ = slurm
    env["SLURM_MIG_SQUEUE"] = squeue("exit 1")
    env["SLURM_JOB_GPUS"] = "0"  # the full prolog runs (and fails: no GPUs simulated here)
    code, _, err = hook(env, capsys)
    assert code == 4 and "asked for gpus" not in err, err
    assert fake_calls(env["SLURM_MIG_SQUEUE"]) == []


def test_the_guard_switched_off_asks_nothing(slurm, capsys):
    env, squeue, _ = slurm
    env["SLURM_MIG_SQUEUE"] = squeue(f"echo '{ASKING['--gres=gpu:1 (untyped)']}'")
    env[guard.GUARD_ENV] = "0"
    assert hook(env, capsys) == (0, "", "")
    assert fake_calls(env["SLURM_MIG_SQUEUE"]) == []


def test_a_job_slurmctld_no_longer_knows_runs(slurm, capsys):
    env, squeue, _ = slurm
    env["SLURM_MIG_SQUEUE"] = squeue("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1")
    assert hook(env, capsys) == (0, "", "")


def test_squeue_failing_every_time_refuses_the_job(slurm, capsys, no_pauses):
    """Fail-closed: a job we cannot ask about may be a gpu job without its gpus."""
    env, squeue, scontrol = slurm
    env["SLURM_MIG_SQUEUE"] = squeue(
        "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; exit 1")
    code, out, err = hook(env, capsys)
    assert code == 9, err
    assert err.startswith("slurm-mig prolog: error: job 812: cannot tell whether job 812 asked "
                          "for gpus: `")
    assert "failed: slurm_load_jobs error: Unable to contact slurm controller" in err
    assert "(3 tries); refused rather than risk a gpu job running without its instance" in err
    assert len(fake_calls(env["SLURM_MIG_SQUEUE"])) == 3
    assert fake_calls(scontrol) == []  # Slurm's own drain (Prolog error) stands


def test_squeue_answering_on_the_second_try_is_enough(slurm, capsys, no_pauses, tmp_path):
    env, squeue, _ = slurm
    flag = tmp_path / "tried"
    env["SLURM_MIG_SQUEUE"] = squeue(
        f"if [ -e {flag} ]; then echo '{CPU_JOB_ROW}'; else touch {flag}; "
        f"echo 'Socket timed out on send/recv operation' >&2; exit 1; fi")
    assert hook(env, capsys) == (0, "", "")
    assert len(fake_calls(env["SLURM_MIG_SQUEUE"])) == 2


def test_squeue_missing_refuses_the_job_and_says_how_to_fix(slurm, capsys, tmp_path):
    env, _, _ = slurm
    env["SLURM_MIG_SQUEUE"] = str(tmp_path / "no-squeue")
    code, _, err = hook(env, capsys)
    assert code == 9
    assert "no-squeue not found; install Slurm's client commands on the node or set " \
           "SLURM_MIG_SQUEUE in /etc/default/slurm-mig" in err


def test_squeue_printing_something_else_refuses_the_job(slurm, capsys):
    env, squeue, _ = slurm
    env["SLURM_MIG_SQUEUE"] = squeue("echo 'TRES_PER_NODE'")
    code, _, err = hook(env, capsys)
    assert code == 9
    assert "squeue printed 'TRES_PER_NODE', not 5 fields ending in '|'" in err


def test_a_failed_drain_still_refuses_the_job_and_says_slurm_drains_it(slurm, capsys):
    env, squeue, scontrol = slurm
    env["SLURM_MIG_SQUEUE"] = squeue(f"echo '{ASKING['--gres=gpu:1 (untyped)']}'")
    fake_command(pathlib.Path(scontrol), "echo 'Invalid user id' >&2; exit 1")
    code, _, err = hook(env, capsys)
    assert code == 8
    assert "Slurm drains it (Prolog error; slurm-mig's own drain failed: Invalid user id)" in err


def _script(env: dict, tmp_path, defaults: str) -> subprocess.CompletedProcess:
    path = tmp_path / "defaults"
    path.write_text(defaults)
    path.chmod(0o644)
    env = dict(env, SLURM_MIG_DEFAULTS=str(path))
    env.pop("PATH")  # slurmd gives hooks no PATH
    return subprocess.run([os.path.join(REPO, "prolog.d", "50-slurm-mig")], env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_shipped_script_refuses_a_gpu_job_slurm_gave_no_gpu(slurm, tmp_path):
    env, squeue, _ = slurm
    squeue(f"echo '{ASKING['--gres=gpu:1g.10gb:1 (22.05)']}'")
    done = _script(env, tmp_path, f"SLURM_MIG_PYTHON={sys.executable}\n"
                                  f"SLURM_MIG_SQUEUE={tmp_path / 'bin' / 'squeue'}\n")
    assert done.returncode == 8, done.stderr
    assert done.stderr.startswith("slurm-mig prolog: error: job 812: it asked for gpus")


def test_the_shipped_script_runs_a_cpu_job(slurm, tmp_path):
    env, squeue, _ = slurm
    squeue(f"echo '{CPU_JOB_ROW}'")
    done = _script(env, tmp_path, f"SLURM_MIG_PYTHON={sys.executable}\n"
                                  f"SLURM_MIG_SQUEUE={tmp_path / 'bin' / 'squeue'}\n")
    assert (done.returncode, done.stderr) == (0, "")
    assert len(fake_calls(str(tmp_path / "bin" / "squeue"))) == 1


def test_the_shipped_script_with_the_guard_off_starts_no_python(slurm, tmp_path):
    env, squeue, _ = slurm
    squeue(f"echo '{ASKING['--gres=gpu:1 (untyped)']}'")
    done = _script(env, tmp_path, "SLURM_MIG_PYTHON=/nonexistent/python\n"
                                  "SLURM_MIG_PROLOG_GUARD=0\n")
    assert (done.returncode, done.stderr) == (0, "")
    assert fake_calls(str(tmp_path / "bin" / "squeue")) == []
