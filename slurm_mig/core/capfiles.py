"""MIG capability device files: what ``/dev/nvidia-caps/nvidia-cap<N>`` must be, and what to do.

The driver publishes each MIG instance's capabilities under
``/proc/driver/nvidia/capabilities/gpu<M>/mig/gi<G>/access`` and ``.../gi<G>/ci<C>/access``
(``DeviceFileMinor:``, ``DeviceFileMode:`` in decimal, optionally ``DeviceFileUID:``,
``DeviceFileGID:``, ``DeviceFileModify:``) but makes no ``/dev`` node for them;
``nvidia-modprobe -f <that file>`` does, with the major of ``nvidia-caps`` in
``/proc/devices`` (docs/gres.md, "Capability device files").  This module is the pure half:
parse those two texts, and decide per file what to do.  :mod:`slurm_mig.host.devnodes` does
the I/O, :mod:`slurm_mig.node.capfiles` ties them to a backend's instances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .devices import DeviceFilesError

CAPS_DEVICE = "nvidia-caps"  #: its name in /proc/devices ("Character devices:")
#: nvidia-modprobe's defaults when a field is absent (init_device_file_parameters).
DEFAULT_MODE, DEFAULT_UID, DEFAULT_GID = 0o666, 0, 0
MODE_MASK = 0o777

# What decide() answers.
OK = "ok"  #: right already: untouched
CREATE = "create"  #: missing: made
REPLACE = "replace"  #: wrong type, major or minor: a new node renamed over it
CHMOD = "chmod"  #: right device, wrong mode or owner: chmod/chown in place
KEPT = "kept"  #: wrong, but an instance in use depends on it: left for later, reported
UNMANAGED = "unmanaged"  #: DeviceFileModify: 0: the admin manages it; never touched

FIX_DRIVER = ("load the NVIDIA driver (`nvidia-modprobe -c 0` or `modprobe nvidia`), "
              "then run `slurm-mig apply` again")


@dataclass(frozen=True)
class CapEntry:
    """One driver capability file (``.../access``) as nvidia-modprobe reads it."""

    minor: int
    mode: int = DEFAULT_MODE
    uid: int = DEFAULT_UID
    gid: int = DEFAULT_GID
    modify: bool = True


def parse_cap_entry(text: str, source: str) -> CapEntry:
    """``DeviceFileMinor: 84`` ... -> :class:`CapEntry`; a field missing takes nvidia-modprobe's
    default, but ``DeviceFileMinor`` is required (nvidia-modprobe gives up without it)."""
    fields = {}
    for raw in text.splitlines():
        name, sep, value = raw.partition(":")
        value = value.strip()
        if sep and value.isdigit():
            fields[name.strip()] = int(value)
    if "DeviceFileMinor" not in fields:
        raise DeviceFilesError(f"{source}: no 'DeviceFileMinor:' line; the driver's capability "
                               f"entry is not what nvidia-modprobe reads; check the driver "
                               f"(`cat {source}`, nvidia-smi)")
    return CapEntry(minor=fields["DeviceFileMinor"],
                    mode=fields.get("DeviceFileMode", DEFAULT_MODE) & MODE_MASK,
                    uid=fields.get("DeviceFileUID", DEFAULT_UID),
                    gid=fields.get("DeviceFileGID", DEFAULT_GID),
                    modify=fields.get("DeviceFileModify", fields.get("ModifyDeviceFiles", 1)) == 1)


def parse_proc_devices(text: str, name: str = CAPS_DEVICE) -> Optional[int]:
    """The major of character device ``name`` in ``/proc/devices`` text; None when absent.
    Exact name match in the "Character devices:" section, as nvidia-modprobe does."""
    in_chars = False
    for raw in text.splitlines():
        line = raw.strip()
        if line == "Character devices:":
            in_chars = True
            continue
        if not in_chars:
            continue
        if not line:
            break  # the end of the section ("Block devices:" follows)
        parts = line.split()
        if len(parts) == 2 and parts[1] == name and parts[0].isdigit():
            return int(parts[0])
    return None


def no_major(source: str) -> DeviceFilesError:
    return DeviceFilesError(f"{source} lists no '{CAPS_DEVICE}' character device, so the MIG "
                            f"capability files /dev/nvidia-caps/nvidia-cap* cannot be made; "
                            f"{FIX_DRIVER}")


@dataclass(frozen=True)
class WantedNode:
    """A capability file one instance needs, with the entry it comes from."""

    path: str  #: <dev>/nvidia-caps/nvidia-cap<minor>
    access: str  #: the driver's capability file it is made from (nvidia-modprobe -f <access>)
    major: int
    entry: CapEntry
    owner: str  #: "gpu 0 gi 9" or "gpu 0 gi 9 ci 0", for messages
    in_use: Tuple[str, ...] = ()  #: who uses the instance now ("pid 4242", "job 812")


@dataclass(frozen=True)
class SeenNode:
    """What is at a path now (lstat, never followed)."""

    kind: str  #: "chr", "reg", "missing", or "other" (a link, a directory, a block device ...)
    major: int = -1
    minor: int = -1
    mode: int = 0
    uid: int = -1
    gid: int = -1
    ino: int = 0


MISSING = SeenNode("missing")


@dataclass(frozen=True)
class Decision:
    node: WantedNode
    action: str
    why: str = ""

    def __str__(self) -> str:
        return f"{self.node.path} ({self.node.owner}): {self.action}" + (f", {self.why}" if self.why else "")


def decide(node: WantedNode, seen: SeenNode, *, simulated: bool = False) -> Decision:
    """What to do about one file.  Rules (docs/gres.md):

    * missing: made (nothing can depend on a missing file, in use or not);
    * a character device with the entry's major and minor: owner and mode fixed in place
      when they differ, else left alone (same inode);
    * anything else at the path (another major or minor, a regular file, a link): replaced
      by an atomic rename, unless the instance is in use: then ``kept`` and reported, since a
      running job's device cgroup was set up for what was there;
    * ``DeviceFileModify: 0``: never touched (nvidia-modprobe does the same);
    * ``simulated``: the simulator's tree may hold empty regular files where it may not
      mknod; those count as right, and owners are not checked.
    """
    e = node.entry
    if not e.modify:
        return Decision(node, UNMANAGED, "the driver says DeviceFileModify: 0" +
                        ("; it is missing" if seen.kind == "missing" else ""))
    if seen.kind == "missing":
        return Decision(node, CREATE)
    right_dev = (seen.kind == "chr" and (seen.major, seen.minor) == (node.major, e.minor)) or (
        simulated and seen.kind == "reg")
    if not right_dev:
        what = (f"char {seen.major}:{seen.minor}, not {node.major}:{e.minor}" if seen.kind == "chr"
                else f"a {'regular file' if seen.kind == 'reg' else 'non-device'}, not char "
                     f"{node.major}:{e.minor}")
        if node.in_use:
            return Decision(node, KEPT, f"{what}; in use by {', '.join(node.in_use)}: fixed "
                                        f"once the instance is idle (the next apply or prolog)")
        return Decision(node, REPLACE, what)
    wrong = []
    if seen.mode & MODE_MASK != e.mode:
        wrong.append(f"mode {seen.mode & MODE_MASK:04o}, not {e.mode:04o}")
    if not simulated and (seen.uid, seen.gid) != (e.uid, e.gid):
        wrong.append(f"owner {seen.uid}:{seen.gid}, not {e.uid}:{e.gid}")
    if not wrong:
        return Decision(node, OK)
    if node.in_use:
        return Decision(node, KEPT, f"{'; '.join(wrong)}; in use by {', '.join(node.in_use)}")
    return Decision(node, CHMOD, "; ".join(wrong))
