"""A private MariaDB and slurmdbd for a sandbox cluster (tests only; docs/accounting.md).

MariaDB runs as root with its own datadir, socket and a loopback TCP port under a temp
directory; slurmdbd uses the sandbox's munged and reads ``slurmdbd.conf`` next to the
sandbox's slurm.conf (mode 0600, as slurmdbd insists).  Both are our children, stopped on
exit.  Needs the Debian packages ``mariadb-server`` and ``slurmdbd``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional

from slurm_mig.sandbox.host import free_ports, which

PASSWORD = "sandbox-acct"  # a throwaway database on loopback, removed on exit


def missing() -> Optional[str]:
    """Why the accounting stack cannot run here, or None."""
    need = ["mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "sacct", "sacctmgr"]
    gone = [n for n in need if not (which(n) or shutil.which(n, path="/usr/sbin:/usr/bin"))]
    if gone:
        return f"not installed: {', '.join(gone)} (apt-get install mariadb-server slurmdbd)"
    if os.geteuid() != 0:
        return "needs root"
    return None


def _bin(name: str) -> str:
    return which(name) or shutil.which(name, path="/usr/sbin:/usr/bin") or name


def _wait(what: str, check, timeout: float, log: str = "") -> None:
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            tail = open(log).read()[-2000:] if log and os.path.exists(log) else ""
            raise RuntimeError(f"{what} not ready after {timeout:g}s\n{tail}")
        time.sleep(0.1)


def _stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def accounting(etc: str, munge_socket: str, timings: Dict[str, float],
               configure: Callable[[Dict[str, str]], None]) -> Iterator[Dict[str, str]]:
    """MariaDB + slurmdbd.  ``configure`` gets the slurm.conf keys that point Slurm at this
    slurmdbd (``AccountingStorageTRES`` is the caller's) before slurmdbd is asked anything:
    sacctmgr finds slurmdbd through slurm.conf.  Yields the same keys."""
    tmp = tempfile.mkdtemp(prefix="slurm-mig-acct-", dir="/var/tmp")
    os.chmod(tmp, 0o755)
    db_port, dbd_port = free_ports(2)
    data, sock = os.path.join(tmp, "data"), os.path.join(tmp, "mysqld.sock")
    db: Optional[subprocess.Popen] = None
    dbd: Optional[subprocess.Popen] = None
    try:
        t0 = time.monotonic()
        subprocess.run([_bin("mariadb-install-db"), "--no-defaults", f"--datadir={data}",
                        "--user=root", "--auth-root-authentication-method=socket",
                        "--skip-test-db"], check=True, capture_output=True, timeout=120)
        timings["mariadb_install_db"] = time.monotonic() - t0
        t0 = time.monotonic()
        db_log = os.path.join(tmp, "mariadbd.log")
        db = subprocess.Popen([_bin("mariadbd"), "--no-defaults", f"--datadir={data}",
                               f"--socket={sock}", "--bind-address=127.0.0.1",
                               f"--port={db_port}", "--user=root",
                               f"--pid-file={tmp}/mariadbd.pid", f"--log-error={db_log}",
                               "--innodb-buffer-pool-size=32M", "--skip-log-bin"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
        client = [_bin("mariadb"), "--no-defaults", f"--socket={sock}", "-u", "root"]
        _wait("mariadbd", lambda: db.poll() is not None or subprocess.run(
            client + ["-e", "select 1"], capture_output=True).returncode == 0, 60, db_log)
        if db.poll() is not None:
            raise RuntimeError(f"mariadbd exited {db.returncode}: {open(db_log).read()[-2000:]}")
        subprocess.run(client + ["-e",
                                 "CREATE DATABASE slurm_acct_db; "
                                 f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; "
                                 "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"],
                       check=True, capture_output=True, timeout=30)
        timings["mariadbd_start"] = time.monotonic() - t0

        t0 = time.monotonic()
        conf = os.path.join(etc, "slurmdbd.conf")
        dbd_log = os.path.join(tmp, "slurmdbd.log")
        text = "\n".join([
            "AuthType=auth/munge", f"AuthInfo=socket={munge_socket}",
            "DbdHost=localhost", "DbdAddr=127.0.0.1", f"DbdPort={dbd_port}", "SlurmUser=root",
            "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1",
            f"StoragePort={db_port}", "StorageUser=slurm", f"StoragePass={PASSWORD}",
            "StorageLoc=slurm_acct_db", f"PidFile={tmp}/slurmdbd.pid", f"LogFile={dbd_log}",
            "DebugLevel=info", ""])
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(conf, 0o600)
        keys = {"AccountingStorageType": "accounting_storage/slurmdbd",
                "AccountingStorageHost": "localhost", "AccountingStoragePort": str(dbd_port),
                # For slurmdbd this is the munge socket its clients use (AuthInfo is not).
                "AccountingStoragePass": munge_socket,
                "JobAcctGatherType": "jobacct_gather/linux"}
        configure(keys)
        env = dict(os.environ, SLURM_CONF=os.path.join(etc, "slurm.conf"))
        dbd = subprocess.Popen([_bin("slurmdbd"), "-D"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        last = {}

        def answers() -> bool:
            proc = subprocess.run([_bin("sacctmgr"), "-i", "-n", "-P", "show", "cluster"],
                                  env=env, capture_output=True, text=True)
            last["err"] = proc.stderr
            return proc.returncode == 0

        try:
            _wait("slurmdbd", lambda: dbd.poll() is not None or answers(), 60, dbd_log)
        except RuntimeError as err:
            raise RuntimeError(f"{err}\nsacctmgr: {last.get('err')}") from err
        if dbd.poll() is not None:
            raise RuntimeError(f"slurmdbd exited {dbd.returncode}: {open(dbd_log).read()[-2000:]}")
        timings["slurmdbd_start"] = time.monotonic() - t0
        yield keys
    finally:
        _stop(dbd)
        _stop(db)
        if not os.environ.get("SLURM_MIG_KEEP_SANDBOX"):
            shutil.rmtree(tmp, ignore_errors=True)


def sacctmgr(etc: str, *args: str) -> str:
    env = dict(os.environ, SLURM_CONF=os.path.join(etc, "slurm.conf"))
    return subprocess.run([_bin("sacctmgr"), "-i", *args], env=env, check=True,
                          capture_output=True, text=True, timeout=30).stdout


def sacct(etc: str, *args: str) -> str:
    env = dict(os.environ, SLURM_CONF=os.path.join(etc, "slurm.conf"))
    return subprocess.run([_bin("sacct"), *args], env=env, check=True, capture_output=True,
                          text=True, timeout=30).stdout


def sacct_alloc_tres(etc: str, job: int) -> List[str]:
    """``sacct -j JOB -P -n -o JobID,AllocTRES``: one line per job/step."""
    env = dict(os.environ, SLURM_CONF=os.path.join(etc, "slurm.conf"))
    out = subprocess.run([_bin("sacct"), "-j", str(job), "-P", "-n", "-o", "JobID,AllocTRES"],
                         env=env, check=True, capture_output=True, text=True, timeout=30).stdout
    return [l for l in out.splitlines() if l.strip()]
