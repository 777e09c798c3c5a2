"""Write the HAND-MADE data_parser fixtures from the 22.05 recording (nothing here was printed
by a real 23.x/24.x Slurm; see README.md in this folder and docs/slurm-json.md).

The same cluster state as tests/data/slurm/22.05 (same jobs, nodes, gres, reasons), rewritten
in the shapes documented for Slurm's data_parser plugins:

* ``handmade/24.11/squeue.json`` (data_parser/v0.0.42): numbers as {set, infinite, number},
  ``job_state`` a list, ``hold``, tres strings with ``gres/``, ``meta.slurm`` with string versions.
* ``handmade/24.11/sinfo-N*.json``: a ``sinfo`` list of records, one per node and partition,
  fields from SchedMD's ``PARSER_ARRAY(SINFO_DATA)`` (v0.0.42): ``node.state``,
  ``nodes.nodes``, ``partition.name``, ``gres.total``/``gres.used``, ``reason.description``.
* ``handmade/nodes-v0.0.40/sinfo-N.json``: the node-object form (``nodes`` list with
  ``state`` lists, ``partitions``, ``reason`` a string), as slurmrestd's /nodes prints it.

    python tests/data/slurm/make_handmade.py
"""

import copy
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
REC = os.path.join(HERE, "22.05")

JOB_NUMBERS = (
    "accrue_time array_job_id array_task_id array_max_tasks cores_per_socket billable_tres "
    "cpus_per_task cpu_frequency_minimum cpu_frequency_maximum cpu_frequency_governor deadline "
    "delay_boot eligible_time end_time het_job_id het_job_offset last_sched_evaluation max_cpus "
    "max_nodes tasks_per_core tasks_per_node tasks_per_socket tasks_per_board cpus node_count "
    "tasks memory_per_node memory_per_cpu minimum_cpus_per_node minimum_tmp_disk_per_node "
    "preempt_time pre_sus_time priority resize_time sockets_per_node start_time submit_time "
    "suspend_time time_limit time_minimum threads_per_core").split()


def number(value, infinite=False):
    if infinite:
        return {"set": False, "infinite": True, "number": 0}
    if value is None:
        return {"set": False, "infinite": False, "number": 0}
    return {"set": True, "infinite": False, "number": value}


def meta(parser, release, command):
    major, minor, micro = release.split(".")
    return {"plugin": {"type": "", "name": "", "data_parser": parser,
                       "accounting_storage": "accounting_storage/none"},
            "client": {"source": "/dev/pts/0", "user": "root", "group": "root"},
            "command": command,
            "slurm": {"version": {"major": major, "micro": micro, "minor": minor},
                      "release": release, "cluster": "sandbox"}}


def job_24_11(job):
    job = copy.deepcopy(job)
    for key in JOB_NUMBERS:
        if key in job:
            job[key] = number(job[key], infinite=(key == "time_limit" and job[key] is None))
    job["job_state"] = [job["job_state"]]
    job["hold"] = job["state_reason"].startswith("JobHeld")
    job["nice"] = job["nice"] or 0
    for key in ("tres_per_node", "tres_per_job", "tres_per_task", "tres_per_socket"):
        job[key] = job[key].replace("gres:", "gres/")
    for key in ("show_flags", "profile", "shared"):
        job.pop(key, None)
    return job


def squeue_24_11():
    rec = json.load(open(os.path.join(REC, "squeue.json")))
    return {"jobs": [job_24_11(j) for j in rec["jobs"]],
            "last_backfill": number(1795894280), "last_update": number(1795894282),
            "meta": meta("data_parser/v0.0.42", "24.11.5", ["squeue", "--json"]),
            "errors": [], "warnings": []}


def state_words(node):
    return [node["state"].upper()] + list(node["state_flags"])


def sinfo_24_11(name):
    rec = json.load(open(os.path.join(REC, name)))
    out = []
    for node in rec["nodes"]:
        for part in node["partitions"]:
            busy = node["alloc_cpus"] > 0
            out.append({
                "port": node["port"],
                "node": {"state": state_words(node)},
                "nodes": {"allocated": int(busy), "idle": int(not busy), "other": 0, "total": 1,
                          "hostnames": [node["hostname"]], "addresses": [node["address"]],
                          "nodes": [node["name"]]},
                "cpus": {"allocated": node["alloc_cpus"], "idle": node["idle_cpus"], "other": 0,
                         "total": node["cpus"], "minimum": node["cpus"], "maximum": node["cpus"],
                         "load": {"minimum": node["cpu_load"], "maximum": node["cpu_load"]},
                         "per_node": {"max": number(None, infinite=True)}},
                "memory": {"minimum": node["real_memory"], "maximum": node["real_memory"],
                           "free": {"minimum": number(node["free_memory"]),
                                    "maximum": number(node["free_memory"])},
                           "allocated": node["alloc_memory"]},
                "features": {"total": node["features"], "active": node["active_features"]},
                "gres": {"total": node["gres"], "used": node["gres_used"]},
                "cluster": "sandbox", "comment": node["comment"], "extra": node["extra"],
                "reason": {"description": node["reason"], "time": node["reason_changed_at"],
                           "user": node["reason_set_by_user"] or ""},
                "reservation": "",
                "partition": {"name": part, "nodes": {"configured": "n[1-2]" if part == "debug" else "n2"}},
            })
    return {"sinfo": out, "meta": meta("data_parser/v0.0.42", "24.11.5", ["sinfo", "-N", "--json"]),
            "errors": [], "warnings": []}


def nodes_v0_0_40(name):
    rec = json.load(open(os.path.join(REC, name)))
    nodes = []
    for node in rec["nodes"]:
        node = copy.deepcopy(node)
        node["state"] = state_words(node)
        del node["state_flags"]
        for key in ("boot_time", "last_busy", "reason_changed_at", "slurmd_start_time", "free_memory"):
            node[key] = number(node[key])
        node["next_state_after_reboot"] = ["INVALID"]
        del node["next_state_after_reboot_flags"]
        nodes.append(node)
    return {"nodes": nodes, "meta": meta("data_parser/v0.0.40", "23.11.10", ["sinfo", "-N", "--json"]),
            "errors": [], "warnings": []}


def write(path, doc):
    path = os.path.join(HERE, "handmade", path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    write("24.11/squeue.json", squeue_24_11())
    write("24.11/sinfo-N.json", sinfo_24_11("sinfo-N.json"))
    write("24.11/sinfo-N-drained.json", sinfo_24_11("sinfo-N-drained.json"))
    write("nodes-v0.0.40/sinfo-N.json", nodes_v0_0_40("sinfo-N.json"))
    write("nodes-v0.0.40/sinfo-N-drained.json", nodes_v0_0_40("sinfo-N-drained.json"))
