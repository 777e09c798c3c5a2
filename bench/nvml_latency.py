"""NVML call latency, process start costs and the driver's capability files, read-only.

What a prolog or epilog on the NVML backend pays, measured on a real driver, so that the
hooks' fast path (issue 9) can be planned without a GPU: the latency of each NVML call the
backend makes (in-process, median and p90 over many repetitions, first call apart), the
same sequences :class:`slurm_mig.gpu.nvml.NvmlBackend` runs for ``gpus()``,
``profiles()`` and ``instances()``, whole-process times beside ``python3 -c pass``, and
the driver's capability tree and device files (issue 11).  Asserts nothing; run as root
on a GPU node, from the repository root::

    python3 bench/nvml_latency.py --out /tmp/nvml-latency      # about 2-4 minutes

It writes ``latency.json`` (tests/data/nvml/ keeps one), ``report.txt``, ``caps.txt`` and
``importtime.txt`` under ``--out``.  ``--quick`` runs few repetitions (a smoke test);
``--fake ROOT`` times the pynvml look-alike over a simulated node instead of the driver
(for testing this script without a GPU, numbers meaningless).

**Read-only.**  The script never calls a create, destroy or set function, and does not
rely on that alone: it re-executes itself with a ``sitecustomize.py`` (written from
:data:`GUARD_SOURCE` into a temporary directory put first on ``PYTHONPATH``, so every
Python process it starts has it too) that, when ``pynvml`` is imported, replaces every
pynvml function whose name contains one of :data:`GUARD_WORDS` with one that raises
``RuntimeError``, and refuses any such name in ``pynvml._nvmlGetFunctionPointer`` (the
path every pynvml wrapper takes to the C library).  It prints how many functions it
disabled and stops when that is 0.  The one child that runs without the guard is
``python3 -I -c pass`` (``-I`` ignores ``PYTHONPATH``), which imports nothing from NVML.
nvidia-smi is only asked ``--version`` and ``--query-gpu`` questions.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

FORMAT = 1
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUARD_ENV = "NVML_LATENCY_GUARD"  #: set, to the guard directory, in the re-executed script
GUARD_WORDS = ("Set", "Create", "Destroy", "Reset", "Clear", "Register", "Inject",
               "Enable", "Disable", "Apply")

#: The sitecustomize.py every Python process of a run gets (see the module docstring).
GUARD_SOURCE = '''\
"""Read-only guard for pynvml, written by slurm-mig's bench/nvml_latency.py."""
import sys

WORDS = %r


def _refused(name):
    def refused(*args, **kwargs):
        raise RuntimeError("read-only guard: pynvml." + name + " is disabled")
    refused.__name__ = name
    return refused


def disable(module):
    """Disable every function of ``module`` whose name has one of WORDS; return how many."""
    function = type(disable)
    names = [n for n, v in vars(module).items()
             if isinstance(v, function) and any(w in n for w in WORDS)]
    for name in names:
        setattr(module, name, _refused(name))
    lookup = vars(module).get("_nvmlGetFunctionPointer")
    if lookup is not None:
        def checked(cname, _lookup=lookup):
            if any(w in cname for w in WORDS):
                raise RuntimeError("read-only guard: NVML function " + cname + " is disabled")
            return _lookup(cname)
        module._nvmlGetFunctionPointer = checked
    module.READONLY_GUARD = len(names)
    return len(names)


class _Finder:
    """Wraps pynvml's loader so that disable() runs right after the module body."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "pynvml":
            return None
        finder = sys.modules["_frozen_importlib_external"].PathFinder
        spec = finder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            if disable(module) == 0:
                raise ImportError("read-only guard: no pynvml function disabled; not importing pynvml")
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder)
''' % (GUARD_WORDS,)

#: Every NVML call the NVML backend makes on the hooks' path (gpus(), profiles(),
#: instances(), close(); not the repair path, which creates).  latency.json has an entry
#: for each: measured, or, where MIG mode off gives no GPU instance to ask, an estimate.
HOOK_PATH_CALLS = (
    "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetPciInfo", "nvmlDeviceGetMigMode", "nvmlDeviceGetMinorNumber",
    "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetGpuInstanceProfileInfo",
    "nvmlDeviceGetGpuInstancePossiblePlacements", "nvmlDeviceGetMaxMigDeviceCount",
    "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId", "nvmlDeviceGetComputeRunningProcesses",
    "nvmlDeviceGetGpuInstances", "nvmlGpuInstanceGetInfo",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo", "nvmlGpuInstanceGetComputeInstances",
    "nvmlComputeInstanceGetInfo",
)
#: Calls that need a GPU instance (MIG on, an instance made): with MIG off they get the
#: figure of a device query of the same kind, marked as an estimate.
ESTIMATED_FROM = {
    "nvmlGpuInstanceGetInfo": "nvmlDeviceGetMigMode",
    "nvmlGpuInstanceGetComputeInstanceProfileInfo": "nvmlDeviceGetGpuInstanceProfileInfo",
    "nvmlGpuInstanceGetComputeInstances": "nvmlDeviceGetGpuInstances",
    "nvmlComputeInstanceGetInfo": "nvmlDeviceGetMigMode",
}


# ----------------------------------------------------------------------------- numbers


def ms(ns: float) -> float:
    return round(ns / 1e6, 4)


def stats(samples_ns: list) -> dict:
    """n, first, median, p90 (as bench/hooks.py: sorted[int(0.9 (n-1))]), min, max in ms."""
    if not samples_ns:
        return {"n": 0}
    s = sorted(samples_ns)
    return {"n": len(s), "first_ms": ms(samples_ns[0]), "median_ms": ms(statistics.median(s)),
            "p90_ms": ms(s[int(0.9 * (len(s) - 1))]), "min_ms": ms(s[0]), "max_ms": ms(s[-1])}


def describe(value) -> object:
    """A short JSON-able summary of what a call returned."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if len(value) <= 4 and all(isinstance(v, (int, str, bytes)) for v in value):
            return [describe(v) for v in value]
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


class Clock:
    """Times calls of one NVML module, each failure recorded as a fact."""

    def __init__(self, nv, quick: bool):
        self.nv = nv
        self.quick = quick

    def reps(self, n: int) -> int:
        return min(n, 5) if self.quick else n

    def time(self, fn, *args, n: int = 200, budget: float = 4.0, **kwargs) -> dict:
        """``fn(*args)`` up to ``n`` times (at least 5, within ``budget`` seconds)."""
        n = self.reps(n)
        samples = []
        out: dict = {}
        end = time.perf_counter() + budget
        for i in range(n):
            t0 = time.perf_counter_ns()
            try:
                value = fn(*args, **kwargs)
                error = None
            except RuntimeError:
                raise  # the read-only guard: never swallowed
            except Exception as err:  # NVMLError, or a pynvml without the call
                value, error = None, err
            samples.append(time.perf_counter_ns() - t0)
            if i == 0:
                if error is None:
                    out["result"] = describe(value)
                else:
                    out["error"] = getattr(error, "value", None)
                    out["message"] = f"{type(error).__name__}: {error}"
            if i >= 4 and time.perf_counter() > end:
                break
        out.update(stats(samples))
        return out


# ----------------------------------------------------------------------------- subprocesses


def run_text(argv: list, timeout: float = 30.0, env=None) -> dict:
    """A read-only command's exit code and output (never raises)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"argv": argv, "rc": None, "error": f"{type(err).__name__}: {err}"}
    return {"argv": argv, "rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def child_env(guard: str, repo: str | None, config: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") or k == "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (guard, repo) if p)
    env["SLURM_MIG_CONFIG"] = config
    return env


def processes(py: str, env: dict, repo: str | None, rounds: int, budget: float,
              quick: bool) -> dict:
    """Whole-process wall times, the variants interleaved round by round."""
    gpus_seq = ("import pynvml as n; n.nvmlInit()\n"
                "for i in range(n.nvmlDeviceGetCount()):\n"
                " h = n.nvmlDeviceGetHandleByIndex(i); n.nvmlDeviceGetPciInfo(h); n.nvmlDeviceGetMigMode(h)\n"
                " n.nvmlDeviceGetMinorNumber(h); n.nvmlDeviceGetUUID(h); n.nvmlDeviceGetName(h)\n"
                "n.nvmlShutdown()")
    variants = {
        "python3 -c pass": [py, "-c", "pass"],
        "python3 -S -c pass": [py, "-S", "-c", "pass"],
        "python3 -I -c pass": [py, "-I", "-c", "pass"],
        "python3 -c 'import pynvml'": [py, "-c", "import pynvml"],
        "import pynvml; init; shutdown": [py, "-c", "import pynvml as n; n.nvmlInit(); n.nvmlShutdown()"],
        "import pynvml; init; handle(0); mig mode; shutdown": [
            py, "-c", "import pynvml as n; n.nvmlInit(); h = n.nvmlDeviceGetHandleByIndex(0); "
                      "n.nvmlDeviceGetMigMode(h); n.nvmlShutdown()"],
        "import pynvml; gpus() call sequence": [py, "-c", gpus_seq],
    }
    if repo:
        variants.update({
            "python3 -c 'import slurm_mig.hooks.run'": [py, "-c", "import slurm_mig.hooks.run"],
            "NvmlBackend: gpus(); profiles(0); close()": [
                py, "-c", "from slurm_mig.gpu.nvml import NvmlBackend\n"
                          "b = NvmlBackend(); b.gpus(); b.profiles(0); b.close()"],
            "python3 -m slurm_mig --backend nvml status": [
                py, "-m", "slurm_mig", "--backend", "nvml", "status"],
        })
    check = run_text([py, "-c", "import sys, pynvml; print(pynvml.READONLY_GUARD); "
                                "sys.exit(0 if pynvml.READONLY_GUARD > 0 else 3)"], env=env)
    if check["rc"] != 0:
        return {"error": "the read-only guard is not active in child processes: no child run",
                "check": check}
    samples: dict = {name: [] for name in variants}
    first: dict = {}
    end = time.perf_counter() + budget
    rounds = 3 if quick else rounds
    for r in range(rounds):
        for name, argv in variants.items():
            t0 = time.perf_counter_ns()
            done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=repo or None)
            samples[name].append(time.perf_counter_ns() - t0)
            if r == 0:
                first[name] = {"argv": argv[1:], "rc": done.returncode,
                               "stdout_tail": done.stdout[-600:], "stderr_tail": done.stderr[-600:]}
        if r >= 4 and time.perf_counter() > end:
            break
    base = statistics.median(samples["python3 -c pass"])
    out = {}
    for name, values in samples.items():
        entry = {**stats(values), **first[name]}
        entry["x_python_c_pass"] = round(statistics.median(values) / base, 2)
        out[name] = entry
    return {"guard_in_children": int(check["stdout"].strip() or 0), "variants": out}


# ----------------------------------------------------------------------------- capability files


def read_small(path: str, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        return f"<{type(err).__name__}: {err}>"
    text = data[:limit].decode(errors="replace")
    return text + ("\n<... cut at %d bytes>" % limit if len(data) > limit else "")


def stat_entry(path: str) -> dict:
    try:
        st = os.lstat(path)
    except OSError as err:
        return {"path": path, "error": f"{type(err).__name__}: {err}"}
    entry = {"path": path, "mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    if st.st_rdev:
        entry["major"], entry["minor"] = os.major(st.st_rdev), os.minor(st.st_rdev)
    return entry


def tree(root: str, depth: int, max_files: int = 400) -> dict:
    """find ROOT -maxdepth DEPTH, with each regular file's (small) content."""
    listing = run_text(["find", root, "-maxdepth", str(depth)])
    contents = {}
    for path in (listing.get("stdout") or "").split():
        if len(contents) >= max_files:
            break
        if os.path.isfile(path):
            contents[path] = read_small(path)
    return {"find": listing, "contents": contents}


def micro(fn, n: int) -> dict:
    samples = []
    result = None
    for _ in range(n):
        t0 = time.perf_counter_ns()
        try:
            result = fn()
        except OSError as err:
            result = f"{type(err).__name__}: {err}"
        samples.append(time.perf_counter_ns() - t0)
    out = stats(samples)
    out["result"] = result if isinstance(result, (bool, str, int)) or result is None else type(result).__name__
    return out


def capabilities(quick: bool) -> dict:
    caps_tree = tree("/proc/driver/nvidia/capabilities", 6)
    driver_tree = tree("/proc/driver/nvidia", 3, max_files=60)
    driver_tree["contents"] = {p: t for p, t in driver_tree["contents"].items()
                               if "/capabilities/" not in p}
    caps_proc = {}
    for path in sorted(glob.glob("/proc/driver/nvidia-caps/*")):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            caps_proc[path] = {"error": f"{type(err).__name__}: {err}"}
            continue
        text = data.decode(errors="replace")
        caps_proc[path] = {"bytes": len(data), "lines": text.count("\n"),
                           "sha256": hashlib.sha256(data).hexdigest(),
                           "head": "\n".join(text.splitlines()[:12])}
    devs = sorted(glob.glob("/dev/nvidia*"))
    modprobe = shutil.which("nvidia-modprobe")
    out = {
        "capabilities_tree": caps_tree,
        "driver_tree": driver_tree,
        "proc_devices": read_small("/proc/devices", 16384),
        "proc_nvidia_caps": caps_proc,
        "ls_ln": run_text(["ls", "-ln", *devs]) if devs else {"stdout": "", "note": "no /dev/nvidia*"},
        "dev_nodes": [stat_entry(p) for p in devs] + [stat_entry(p) for p in
                                                      sorted(glob.glob("/dev/nvidia-caps/*"))],
        "nvidia_modprobe": {"path": modprobe,
                            "version": run_text([modprobe, "--version"]) if modprobe else None},
        "nvidia_persistenced_running": any(
            read_small(p, 64).strip() == "nvidia-persiste" for p in glob.glob("/proc/[0-9]*/comm")),
    }
    # What a fast path would pay per file check (median over 1000; 100 for the big file).
    n = 50 if quick else 1000
    cap1 = "/dev/nvidia-caps/nvidia-cap1"
    small = next((p for p in sorted(caps_tree["contents"]) if p.endswith("/config")),
                 next(iter(sorted(caps_tree["contents"])), "/proc/devices"))
    info = next(iter(sorted(glob.glob("/proc/driver/nvidia/gpus/*/information"))), None)
    minors = "/proc/driver/nvidia-caps/mig-minors"

    def read(path):
        with open(path, "rb") as f:
            return len(f.read())
    timings = {
        f"os.stat({cap1})": micro(lambda: bool(os.stat(cap1)), n),
        f"os.path.exists({cap1})": micro(lambda: os.path.exists(cap1), n),
        "os.path.exists(/dev/nvidia-caps/nvidia-cap999) (missing)":
            micro(lambda: os.path.exists("/dev/nvidia-caps/nvidia-cap999"), n),
        "os.stat(/dev/nvidia0)": micro(lambda: bool(os.stat("/dev/nvidia0")), n),
        f"open+read {small}": micro(lambda: read(small), n),
        f"os.stat({minors})": micro(lambda: bool(os.stat(minors)), n),
        f"open+read {minors} (whole)": micro(lambda: read(minors), 20 if quick else 100),
        "open+read /proc/devices": micro(lambda: read("/proc/devices"), n),
    }
    if info:
        timings[f"open+read {info}"] = micro(lambda: read(info), n)
    out["file_timings"] = timings
    return out


# ----------------------------------------------------------------------------- NVML in-process


def nvml_in_process(nv, clock: Clock, repo: str | None) -> dict:
    """Each call's latency, the backend's sequences, and init/shutdown in their variants.

    Each step is recorded on its own: one that fails leaves its traceback under
    ``step_errors`` and the others still run.  Every init is paired with a shutdown
    (NVML counts inits: an unpaired one would make the later pairs cheap)."""
    import ctypes
    import traceback

    calls: dict = {}
    seqs: dict = {}
    out = {"calls": calls, "sequences": seqs, "step_errors": {}}
    got: dict = {"mig_off": None, "answered": [], "profile_id": None}

    def fn(name: str):
        f = getattr(nv, name, None)
        if f is None:
            def f(*args, **kwargs):
                raise AttributeError(f"this pynvml has no {name}")
        return f

    def step(name: str, body) -> None:
        try:
            body()
        except RuntimeError:
            raise  # the read-only guard
        except Exception:  # noqa: BLE001 - a fact to record; the next step runs
            out["step_errors"][name] = traceback.format_exc(limit=6)

    t0 = time.perf_counter_ns()
    try:
        nv.nvmlInit()
    except RuntimeError:
        raise
    except Exception as err:
        out["init_error"] = {"error": getattr(err, "value", None), "message": f"{type(err).__name__}: {err}"}
        return out
    cold_init = time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    nv.nvmlShutdown()
    cold_shutdown = time.perf_counter_ns() - t0

    def init_pairs():
        inits, shuts, pairs = [], [], []
        end = time.perf_counter() + 12.0
        for i in range(clock.reps(200)):
            a = time.perf_counter_ns()
            nv.nvmlInit()
            b = time.perf_counter_ns()
            nv.nvmlShutdown()
            c = time.perf_counter_ns()
            inits.append(b - a)
            shuts.append(c - b)
            pairs.append(c - a)
            if i >= 4 and time.perf_counter() > end:
                break
        calls["nvmlInit"] = {**stats(inits), "cold_first_ms": ms(cold_init),
                             "note": "pynvml.nvmlInit (C nvmlInitWithFlags(0)), each after a shutdown; "
                                     "cold_first_ms: the process's first, loading libnvidia-ml.so.1"}
        calls["nvmlShutdown"] = {**stats(shuts), "cold_first_ms": ms(cold_shutdown)}
        seqs["nvmlInit + nvmlShutdown"] = stats(pairs)
    step("init pairs", init_pairs)

    def pair(init, shutdown, extra=None, n=100, budget=6.0) -> dict:
        samples, first_error = [], None
        end = time.perf_counter() + budget
        for i in range(clock.reps(n)):
            a = time.perf_counter_ns()
            try:
                init()
            except RuntimeError:
                raise
            except Exception as err:  # not initialized: nothing to shut down
                first_error = first_error or f"init: {type(err).__name__}: {err}"
            else:
                try:
                    if extra is not None:
                        extra()
                except RuntimeError:
                    raise
                except Exception as err:
                    first_error = first_error or f"{type(err).__name__}: {err}"
                finally:
                    shutdown()
            samples.append(time.perf_counter_ns() - a)
            if i >= 4 and time.perf_counter() > end:
                break
        return {**stats(samples), **({"error": first_error} if first_error else {})}

    def init_variants():
        lookup = getattr(nv, "_nvmlGetFunctionPointer", None)

        def raw(name):
            def call():
                code = lookup(name)()
                if code != 0:
                    raise nv.NVMLError(code)
            return call
        key = "C nvmlInit_v2 + C nvmlShutdown (ctypes, no pynvml wrapper)"
        if lookup is not None:
            seqs[key] = pair(raw("nvmlInit_v2"), raw("nvmlShutdown"), budget=5.0)
        else:
            seqs[key] = {"n": 0, "error": "this pynvml has no _nvmlGetFunctionPointer"}
        with_flags = fn("nvmlInitWithFlags")
        seqs["nvmlInitWithFlags(0) + nvmlShutdown"] = pair(lambda: with_flags(0), nv.nvmlShutdown, budget=5.0)
        for flag in ("NVML_INIT_FLAG_NO_ATTACH", "NVML_INIT_FLAG_NO_GPUS"):
            value = getattr(nv, flag, None)
            if value is None:
                seqs[f"nvmlInitWithFlags({flag}) + nvmlShutdown"] = {"n": 0, "error": "flag unknown to pynvml"}
                continue
            seqs[f"nvmlInitWithFlags({flag}={value}) + nvmlShutdown"] = pair(
                lambda: with_flags(value), nv.nvmlShutdown, n=50, budget=3.0)
            seqs[f"nvmlInitWithFlags({flag}={value}) + handle(0) + mig mode + nvmlShutdown"] = pair(
                lambda: with_flags(value), nv.nvmlShutdown,
                extra=lambda: nv.nvmlDeviceGetMigMode(nv.nvmlDeviceGetHandleByIndex(0)), n=50, budget=3.0)
        seqs["nvmlInit + handle(0) + mig mode + nvmlShutdown"] = pair(
            nv.nvmlInit, nv.nvmlShutdown,
            extra=lambda: nv.nvmlDeviceGetMigMode(nv.nvmlDeviceGetHandleByIndex(0)), n=100, budget=6.0)
    step("init variants", init_variants)

    # --- one call at a time, NVML initialized
    def gpus_seq():
        for i in range(nv.nvmlDeviceGetCount()):
            d = nv.nvmlDeviceGetHandleByIndex(i)
            nv.nvmlDeviceGetPciInfo(d)
            nv.nvmlDeviceGetMigMode(d)
            nv.nvmlDeviceGetMinorNumber(d)
            nv.nvmlDeviceGetUUID(d)
            nv.nvmlDeviceGetName(d)

    def profiles_seq():
        d = nv.nvmlDeviceGetHandleByIndex(0)
        n_calls = 0
        for enum in range(nv.NVML_GPU_INSTANCE_PROFILE_COUNT):
            n_calls += 1
            try:
                p = nv.nvmlDeviceGetGpuInstanceProfileInfo(d, enum, version=2)
            except nv.NVMLError:
                continue
            c = ctypes.c_uint(0)
            nv.nvmlDeviceGetGpuInstancePossiblePlacements(d, p.id, None, ctypes.byref(c))
            arr = (nv.c_nvmlGpuInstancePlacement_t * max(c.value, 1))()
            c.value = len(arr)
            nv.nvmlDeviceGetGpuInstancePossiblePlacements(d, p.id, arr, ctypes.byref(c))
            n_calls += 2
        return n_calls

    def empty_instances_seq():
        d = nv.nvmlDeviceGetHandleByIndex(0)
        nv.nvmlDeviceGetMigMode(d)
        nv.nvmlDeviceGetMaxMigDeviceCount(d)
        for enum in got["answered"]:
            p = nv.nvmlDeviceGetGpuInstanceProfileInfo(d, enum, version=2)
            arr = (nv.c_nvmlGpuInstance_t * max(p.instanceCount, 1))()
            c = ctypes.c_uint(len(arr))
            nv.nvmlDeviceGetGpuInstances(d, p.id, arr, ctypes.byref(c))

    nv.nvmlInit()
    try:
        def identity():
            out["driver"] = describe(fn("nvmlSystemGetDriverVersion")())
            out["nvml_version"] = describe(fn("nvmlSystemGetNVMLVersion")())
            calls["nvmlSystemGetDriverVersion"] = clock.time(fn("nvmlSystemGetDriverVersion"))
            calls["nvmlDeviceGetCount"] = clock.time(nv.nvmlDeviceGetCount)
            out["gpu_count"] = nv.nvmlDeviceGetCount()
            calls["nvmlDeviceGetHandleByIndex"] = clock.time(nv.nvmlDeviceGetHandleByIndex, 0)
            got["h"] = nv.nvmlDeviceGetHandleByIndex(0)
        step("identity", identity)
        h = got.get("h")
        if h is None:
            return out

        def device_queries():
            for name in ("nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetMinorNumber",
                         "nvmlDeviceGetPciInfo", "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount"):
                calls[name] = clock.time(fn(name), h)
            mode = nv.nvmlDeviceGetMigMode(h)
            out["mig_mode"] = describe(mode)
            got["mig_off"] = not mode[0]
        step("device queries", device_queries)

        def by_uuid():
            calls["nvmlDeviceGetHandleByUUID"] = clock.time(fn("nvmlDeviceGetHandleByUUID"),
                                                            nv.nvmlDeviceGetUUID(h))
        step("handle by UUID", by_uuid)

        def processes_and_mig_handles():
            entry = clock.time(fn("nvmlDeviceGetComputeRunningProcesses"), h)
            entry["note"] = "on the whole GPU's handle (the backend asks each MIG device's)"
            calls["nvmlDeviceGetComputeRunningProcesses"] = entry
            for name, args in (("nvmlDeviceGetMigDeviceHandleByIndex", (h, 0)),
                               ("nvmlDeviceGetGpuInstanceId", (h,)),
                               ("nvmlDeviceGetComputeInstanceId", (h,))):
                entry = clock.time(fn(name), *args)
                if got["mig_off"]:
                    entry["note"] = ("MIG off: the error path, on the whole GPU's handle "
                                     "(the backend asks MIG device handles)")
                calls[name] = entry
        step("processes and MIG device handles", processes_and_mig_handles)

        def profiles():
            info = fn("nvmlDeviceGetGpuInstanceProfileInfo")
            once = {enum: clock.time(info, h, enum, version=2, n=1, budget=0)
                    for enum in range(nv.NVML_GPU_INSTANCE_PROFILE_COUNT)}
            got["answered"] = answered = [e for e, r in once.items() if "error" not in r]
            failed = [e for e, r in once.items() if "error" in r]
            if answered:
                entry = clock.time(info, h, answered[0], version=2)
                entry["enum"] = answered[0]
                got["profile_id"] = info(h, answered[0], version=2).id
            else:
                entry = {"n": 0, "note": "no profile answered"}
            entry["answers"] = {str(e): r.get("result", r.get("message")) for e, r in once.items()}
            paths = {}
            for enum in failed:
                if any(once[int(k)].get("error") == once[enum].get("error") for k in paths):
                    continue
                path = clock.time(info, h, enum, version=2)
                path["enum"] = enum
                paths[str(enum)] = path
            entry["error_paths"] = paths
            calls["nvmlDeviceGetGpuInstanceProfileInfo"] = entry
        step("GPU-instance profile info", profiles)

        def placements_and_instances():
            profile_id = got["profile_id"]
            if profile_id is None:
                return
            place = fn("nvmlDeviceGetGpuInstancePossiblePlacements")
            count_ref = ctypes.c_uint(0)
            entry = clock.time(place, h, profile_id, None, ctypes.byref(count_ref))
            place(h, profile_id, None, ctypes.byref(count_ref))
            array = (nv.c_nvmlGpuInstancePlacement_t * max(count_ref.value, 1))()

            def fill():
                count_ref.value = len(array)
                return place(h, profile_id, array, ctypes.byref(count_ref))
            entry["fill_call"] = clock.time(fill)
            entry.update(profile_id=profile_id, count=count_ref.value,
                         note="the count-only call (NULL array); fill_call: the second call")
            calls["nvmlDeviceGetGpuInstancePossiblePlacements"] = entry

            gis = (nv.c_nvmlGpuInstance_t * 8)()
            gi_count = ctypes.c_uint(8)

            def list_gis():
                gi_count.value = len(gis)
                fn("nvmlDeviceGetGpuInstances")(h, profile_id, gis, ctypes.byref(gi_count))
                return gi_count.value
            entry = clock.time(list_gis)
            entry["profile_id"] = profile_id
            entry["note"] = "result: how many GPU instances of that profile were listed"
            calls["nvmlDeviceGetGpuInstances"] = entry
        step("placements and GPU instances", placements_and_instances)

        def sequences():
            seqs["gpus(): count + per GPU handle, pci, mig mode, minor, uuid, name"] = clock.time(
                gpus_seq, n=200, budget=6.0)
            entry = clock.time(profiles_seq, n=100, budget=8.0)
            entry["calls"] = profiles_seq()
            seqs["profiles(0): profile info for every enum + 2 placement calls per answer"] = entry
            entry = clock.time(empty_instances_seq, n=100, budget=6.0)
            entry["note"] = ("instances() on a MIG GPU without instances, as far as MIG off allows; "
                             "each answered profile's info is read again here, which the backend "
                             "takes from its cache")
            seqs["instances(0) on an empty GPU: mig mode, max MIG devices, GetGpuInstances per profile"] = entry
        step("sequences", sequences)
    finally:
        nv.nvmlShutdown()

    def cold_path():
        nv.nvmlInit()
        try:
            gpus_seq()
            profiles_seq()
        finally:
            nv.nvmlShutdown()
    step("cold path", lambda: seqs.__setitem__("init + gpus() + profiles(0) + shutdown",
                                               clock.time(cold_path, n=50, budget=10.0)))

    def backend():
        from slurm_mig.gpu.nvml import NvmlBackend

        def hook_calls():
            b = NvmlBackend(nv)
            try:
                b.gpus()
                b.profiles(0)
            finally:
                b.close()

        def list_instances():
            b = NvmlBackend(nv)
            try:
                return len(b.instances(0))
            finally:
                b.close()
        seqs["NvmlBackend(): gpus(); profiles(0); close()"] = clock.time(hook_calls, n=50, budget=10.0)
        seqs["NvmlBackend(): instances(0); close()"] = clock.time(list_instances, n=50, budget=6.0)
    if repo:
        step("NvmlBackend", backend)

    for name, proxy in ESTIMATED_FROM.items():
        if name in calls:
            continue
        source = calls.get(proxy, {})
        calls[name] = {"n": 0, "median_ms": None, "p90_ms": None,
                       "estimate_ms": source.get("median_ms"), "estimate_from": proxy,
                       "why": "needs a GPU instance; MIG mode was off on the GPU measured"
                       if got["mig_off"] else "not measured"}
    return out


# ----------------------------------------------------------------------------- report


def report(data: dict) -> str:
    lines = [f"NVML latency on {data.get('gpu_name', '?')}, driver {data.get('driver', '?')}, "
             f"{data.get('recorded', '?')}", ""]
    host = data.get("host", {})
    lines.append(f"host: {host.get('uname', '?')}; python {host.get('python', '?')}; "
                 f"nvidia-ml-py {host.get('nvidia_ml_py', '?')}; guard disabled "
                 f"{data.get('guard', {}).get('disabled', '?')} functions")
    lines.append("")
    lines.append(f"{'call (in-process)':60} {'n':>4} {'first':>9} {'median':>9} {'p90':>9}  error")
    for name, e in data.get("calls", {}).items():
        if e.get("median_ms") is None:
            lines.append(f"{name:60} {'-':>4} {'':>9} {'~' + str(e.get('estimate_ms')):>9} {'':>9}  "
                         f"estimate from {e.get('estimate_from')}")
            continue
        lines.append(f"{name:60} {e['n']:4} {e['first_ms']:9.3f} {e['median_ms']:9.3f} "
                     f"{e['p90_ms']:9.3f}  {e.get('message', '')}")
        for enum, p in e.get("error_paths", {}).items():
            lines.append(f"{'  enum ' + enum + ' (error path)':60} {p['n']:4} {p['first_ms']:9.3f} "
                         f"{p['median_ms']:9.3f} {p['p90_ms']:9.3f}  {p.get('message', '')}")
        if "fill_call" in e:
            p = e["fill_call"]
            lines.append(f"{'  second call (fill the array)':60} {p['n']:4} {p['first_ms']:9.3f} "
                         f"{p['median_ms']:9.3f} {p['p90_ms']:9.3f}")
    lines.append("")
    lines.append(f"{'sequence (in-process)':88} {'n':>4} {'median':>9} {'p90':>9}")
    for name, e in data.get("sequences", {}).items():
        if not e.get("n"):
            lines.append(f"{name:88} {'-':>4}  {e.get('error', '')}")
            continue
        lines.append(f"{name:88} {e['n']:4} {e['median_ms']:9.3f} {e['p90_ms']:9.3f}  {e.get('error', '')}")
    procs = data.get("processes", {}).get("variants", {})
    if procs:
        lines.append("")
        lines.append(f"{'whole process':56} {'n':>4} {'median':>9} {'p90':>9} {'x pass':>7}  rc")
        for name, e in procs.items():
            lines.append(f"{name:56} {e['n']:4} {e['median_ms']:9.2f} {e['p90_ms']:9.2f} "
                         f"{e['x_python_c_pass']:7.2f}  {e['rc']}")
    files = data.get("caps", {}).get("file_timings", {})
    if files:
        lines.append("")
        lines.append(f"{'file check':80} {'n':>5} {'median':>9} {'p90':>9}  result")
        for name, e in files.items():
            lines.append(f"{name:80} {e['n']:5} {e['median_ms']:9.4f} {e['p90_ms']:9.4f}  {e.get('result')}")
    return "\n".join(lines) + "\n"


def caps_text(data: dict) -> str:
    caps = data.get("caps", {})
    out = []
    for key in ("capabilities_tree", "driver_tree"):
        t = caps.get(key, {})
        find = t.get("find", {})
        out.append(f"== {' '.join(find.get('argv', []))} (rc {find.get('rc')})")
        out.append((find.get("stdout") or "") + (find.get("stderr") or ""))
        for path, text in t.get("contents", {}).items():
            out.append(f"-- {path}")
            out.append(text.rstrip("\n"))
    out.append("== /proc/devices")
    out.append(caps.get("proc_devices", "").rstrip("\n"))
    out.append("== /proc/driver/nvidia-caps/*")
    for path, e in caps.get("proc_nvidia_caps", {}).items():
        out.append(f"-- {path}: " + ", ".join(f"{k} {v}" for k, v in e.items() if k != "head"))
        out.append(e.get("head", ""))
    ls = caps.get("ls_ln", {})
    out.append(f"== ls -ln {' '.join(ls.get('argv', [])[2:])}")
    out.append((ls.get("stdout") or "") + (ls.get("stderr") or ""))
    mp = caps.get("nvidia_modprobe", {})
    out.append(f"== nvidia-modprobe: {mp.get('path')}")
    if mp.get("version"):
        out.append((mp["version"].get("stdout") or "") + (mp["version"].get("stderr") or ""))
    out.append(f"== nvidia-persistenced running: {caps.get('nvidia_persistenced_running')}")
    for key, r in data.get("smi", {}).items():
        if isinstance(r, dict) and "argv" in r:
            out.append(f"== {' '.join(r['argv'])} (rc {r.get('rc')})")
            out.append((r.get("stdout") or "") + (r.get("stderr") or ""))
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main


def write(out_dir: str, data: dict) -> None:
    """latency.json, report.txt and caps.txt as far as the run got (a killed run keeps them)."""
    for name, text in (("latency.json", json.dumps(data, indent=1, default=str) + "\n"),
                       ("report.txt", report(data)), ("caps.txt", caps_text(data))):
        tmp = os.path.join(out_dir, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, name))


def reexec_with_guard() -> None:
    """Start this script again with the guard first on PYTHONPATH (every child inherits it)."""
    if "pynvml" in sys.modules:
        raise SystemExit("nvml_latency: pynvml was imported before the read-only guard; not running")
    guard = tempfile.mkdtemp(prefix="nvml-readonly-guard.")
    with open(os.path.join(guard, "sitecustomize.py"), "w") as f:
        f.write(GUARD_SOURCE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (guard, env.get("PYTHONPATH")) if p)
    env[GUARD_ENV] = guard
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "nvml-latency-out")
    ap.add_argument("--repo", default=REPO if os.path.isdir(os.path.join(REPO, "slurm_mig")) else None,
                    help="a slurm-mig checkout to time too (default: this script's)")
    ap.add_argument("--rounds", type=int, default=30, help="whole-process runs per variant")
    ap.add_argument("--process-budget", type=float, default=75.0, help="seconds for them (>= 5 rounds)")
    ap.add_argument("--deadline", type=float, default=240.0,
                    help="seconds from the start by which the whole-process runs end")
    ap.add_argument("--quick", action="store_true", help="few repetitions: a smoke test")
    ap.add_argument("--fake", metavar="ROOT", help="time the pynvml look-alike over a simulated node")
    args = ap.parse_args()
    if os.environ.get(GUARD_ENV) is None:
        reexec_with_guard()
    guard = os.environ[GUARD_ENV]
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)

    t0 = time.perf_counter_ns()
    import pynvml  # the guard wraps it here
    import_ns = time.perf_counter_ns() - t0
    disabled = getattr(pynvml, "READONLY_GUARD", 0)
    print(f"read-only guard: disabled {disabled} pynvml functions", flush=True)
    if not disabled:
        print("nvml_latency: the read-only guard disabled nothing; stopping", file=sys.stderr)
        return 3
    if args.repo:
        sys.path.insert(0, args.repo)
    import importlib.metadata

    try:
        ml_version = importlib.metadata.version("nvidia-ml-py")
    except importlib.metadata.PackageNotFoundError:
        ml_version = None
    data: dict = {
        "format": FORMAT,
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "host": {"uname": " ".join(platform.uname()), "proc_version": read_small("/proc/version").strip(),
                 "python": sys.version.split()[0], "executable": sys.executable,
                 "nvidia_ml_py": ml_version, "cpus": os.cpu_count(),
                 "cpu_model": next((line.split(":", 1)[1].strip() for line in
                                    read_small("/proc/cpuinfo", 8192).splitlines()
                                    if line.startswith("model name")), None),
                 "python_env": {k: v for k, v in os.environ.items() if k.startswith("PYTHON")}},
        "guard": {"disabled": disabled, "words": list(GUARD_WORDS)},
        "import_pynvml_in_process_ms": ms(import_ns),
        "hook_path_calls": list(HOOK_PATH_CALLS),
    }
    # 1. the driver's facts: nvidia-smi queries and the capability files
    smi = shutil.which("nvidia-smi")
    data["smi"] = {"path": smi}
    if smi:
        data["smi"]["version"] = run_text([smi, "--version"])
        data["smi"]["query"] = run_text([smi, "--query-gpu=index,name,pci.device_id,driver_version,"
                                         "persistence_mode,mig.mode.current,mig.mode.pending", "--format=csv"])
        data["smi"]["mig_mode"] = run_text([smi, "--query-gpu=mig.mode.current,mig.mode.pending", "--format=csv"])
        walls = []
        for _ in range(2 if args.quick else 5):
            a = time.perf_counter_ns()
            run_text([smi, "--query-gpu=mig.mode.current", "--format=csv,noheader"])
            walls.append(time.perf_counter_ns() - a)
        data["smi"]["query_wall"] = stats(walls)
    data["caps"] = capabilities(args.quick)
    write(args.out, data)
    print(f"[{time.perf_counter() - started:6.1f}s] driver facts and capability files", flush=True)

    # 2. NVML in-process
    nv = pynvml
    if args.fake:
        from slurm_mig.sim.fakenvml import fake_pynvml

        nv = fake_pynvml(args.fake)
        data["fake"] = args.fake
    got = nvml_in_process(nv, Clock(nv, args.quick), args.repo)
    data.update(got)
    try:
        nv.nvmlInit()
        try:
            data["gpu_name"] = describe(nv.nvmlDeviceGetName(nv.nvmlDeviceGetHandleByIndex(0)))
        finally:
            nv.nvmlShutdown()
    except Exception as err:  # noqa: BLE001 - recorded
        data["gpu_name"] = f"<{type(err).__name__}: {err}>"
    write(args.out, data)
    print(f"[{time.perf_counter() - started:6.1f}s] NVML in-process", flush=True)

    # 3. whole processes, beside python3 -c pass
    config = os.path.join(guard, "slurm-mig.toml")
    with open(config, "w") as f:
        f.write("version = 1\n")
    if args.repo:
        import compileall

        compileall.compile_dir(os.path.join(args.repo, "slurm_mig"), quiet=1)
    env = child_env(guard, args.repo, config)
    budget = max(10.0, min(args.process_budget, args.deadline - (time.perf_counter() - started)))
    data["processes"] = processes(sys.executable, env, args.repo, args.rounds, budget, args.quick)
    write(args.out, data)
    print(f"[{time.perf_counter() - started:6.1f}s] whole processes", flush=True)

    # 4. where the import time goes
    lines = []
    for argv in (["-X", "importtime", "-c", "import pynvml"],
                 ["-X", "importtime", "-m", "slurm_mig", "--backend", "nvml", "status"] if args.repo else None):
        if argv is None:
            continue
        r = run_text([sys.executable, *argv], env=env)
        lines.append(f"== python3 {' '.join(argv)} (rc {r.get('rc')})")
        lines.append(r.get("stderr") or r.get("error", ""))
        for line in (r.get("stderr") or "").splitlines():
            parts = [p.strip() for p in line.split("|")]
            if argv[-1] == "import pynvml" and len(parts) == 3 and parts[2] == "pynvml":
                data["import_pynvml_importtime_us"] = {"self": int(parts[0].split()[-1]),
                                                       "cumulative": int(parts[1])}
    with open(os.path.join(args.out, "importtime.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")

    data["elapsed_s"] = round(time.perf_counter() - started, 1)
    write(args.out, data)
    shutil.rmtree(guard, ignore_errors=True)
    print(report(data), flush=True)
    print(f"[{data['elapsed_s']:6.1f}s] done: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
