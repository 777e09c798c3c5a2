"""The intent journal: what an apply run set out to do, one file per GPU.

Before its first change to a GPU, :mod:`slurm_mig.node.apply` records the wanted layout in
``<state_dir>/journal/<gpu uuid>.json``; once the GPU reads back as wanted, the file
is removed.  A file found at the start of a run therefore means an earlier run died
(or failed) part-way through, and says where it was going.

Files are written atomically (temp file, ``fsync``, ``os.replace``, ``fsync`` of the
directory) in a ``0700`` directory, so a reader sees the old intent or the new one,
never half of one.  A file that cannot be read as an intent is moved aside to
``<name>.corrupt`` and reported with :class:`JournalCorrupt`, never left to crash
every later run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from ..core.errors import SlurmMigError
from ..core.inputs import MAX_GPU_INDEX, from_value, shown
from ..host.atomic import fsync_dir as _fsync_dir, write_json_atomic
from ..host.safefs import ensure_dir

JOURNAL_VERSION = 1
JOURNAL_DIR = "journal"
_MAX_ID = 1023  #: profile ids and placement starts are small; anything above is damage
_MAX_PID = 1 << 22  #: PID_MAX_LIMIT on 64-bit Linux


class JournalCorrupt(SlurmMigError):
    """A journal file could not be read; it has been moved aside (see ``moved_to``)."""

    def __init__(self, message: str, path: str = "", moved_to: Optional[str] = None):
        super().__init__(message)
        self.path = path
        self.moved_to = moved_to


@dataclass(frozen=True)
class Intent:
    """One GPU's pending change: where an apply run was taking it."""

    gpu: int  #: NVML index at the time (informational: the key is the UUID)
    uuid: str  #: GPU UUID, the journal key
    layout: str  #: wanted layout, canonical text (for people)
    instances: Tuple[Tuple[int, int], ...]  #: wanted (profile id, start) pairs (for the engine)
    started: float  #: time.time() when the run began
    pid: int = 0  #: the process that wrote it

    def to_json(self) -> dict:
        return {
            "version": JOURNAL_VERSION,
            "gpu": self.gpu,
            "uuid": self.uuid,
            "layout": self.layout,
            "instances": [list(p) for p in self.instances],
            "started": self.started,
            "pid": self.pid,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Intent":
        """Build an intent from parsed JSON; ValueError/KeyError/TypeError when malformed.

        Numbers are checked as :mod:`slurm_mig.core.inputs` checks every input: JSON numbers
        of the right kind (no bool, no string, no ``1e400``/``NaN``), within bounds."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        version = data.get("version")
        if isinstance(version, bool) or version != JOURNAL_VERSION:
            raise ValueError(f"unknown version {version!r:.40}")
        if not isinstance(data["instances"], list):
            raise ValueError("instances: not a list")
        pairs = tuple((_number(p, 0, _MAX_ID, "instances: profile id"),
                       _number(s, 0, _MAX_ID, "instances: start")) for p, s in data["instances"])
        if not isinstance(data["uuid"], str) or not isinstance(data["layout"], str):
            raise ValueError("uuid and layout must be strings")
        return cls(
            gpu=_number(data["gpu"], 0, MAX_GPU_INDEX, "gpu"),
            uuid=data["uuid"],
            layout=data["layout"],
            instances=pairs,
            started=float(_number(data["started"], 0, 1e12, "started", whole=False)),
            pid=_number(data.get("pid", 0), 0, _MAX_PID, "pid"),
        )


def _number(value, lo, hi, key: str, *, whole: bool = True):
    try:
        return from_value(value, lo, hi, whole=whole)
    except ValueError as err:
        raise ValueError(f"{key}: {shown(value)} is {err}") from err


def new_intent(gpu: int, uuid: str, layout: str, instances, *, now: Optional[float] = None) -> Intent:
    pairs = tuple(sorted((int(p), int(s)) for p, s in instances))
    return Intent(gpu, uuid, layout, pairs, time.time() if now is None else now, os.getpid())


def journal_dir(state_dir: str) -> str:
    return os.path.join(os.fspath(state_dir), JOURNAL_DIR)


def journal_path(state_dir: str, uuid: str) -> str:
    """``<state_dir>/journal/<uuid>.json``; the UUID must be a plain file name."""
    if not uuid or "/" in uuid or uuid.startswith("."):
        raise ValueError(f"GPU UUID {uuid!r} cannot name a journal file")
    return os.path.join(journal_dir(state_dir), f"{uuid}.json")


def write_intent(state_dir: str, intent: Intent) -> str:
    """Record ``intent`` atomically (temp file, fsync, rename); return the file's path."""
    path = journal_path(state_dir, intent.uuid)
    ensure_dir(os.path.dirname(path), 0o700, "journal directory", tighten=True)
    write_json_atomic(path, intent.to_json(), mode=0o600)
    return path


def read_intent(state_dir: str, uuid: str, *, quarantine: bool = True) -> Optional[Intent]:
    """The pending intent for GPU ``uuid``, or None when there is none.

    A file that is not a valid intent (or belongs to another GPU) raises
    :class:`JournalCorrupt`; with ``quarantine`` it is first moved to
    ``<name>.corrupt`` so that the next run starts clean.
    """
    path = journal_path(state_dir, uuid)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        intent = Intent.from_json(json.loads(text))
        if intent.uuid != uuid:
            raise ValueError(f"it is for GPU {intent.uuid}")
        return intent
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        moved = None
        if quarantine:
            moved = set_aside(state_dir, uuid)
            fix = f"moved to {moved}; check the GPU with `slurm-mig status` and apply again"
        else:
            fix = "a real run moves it aside"
        raise JournalCorrupt(
            f"intent journal {path} is unreadable ({reason}); {fix}", path=path, moved_to=moved
        ) from err


def clear_intent(state_dir: str, uuid: str) -> bool:
    """Remove GPU ``uuid``'s intent; True when there was one."""
    path = journal_path(state_dir, uuid)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    # No directory fsync: a removal lost to an OS crash only makes the next run
    # "finish" a change that is already done (the GPU's MIG state does not outlive
    # an OS crash either, and rolling forward onto a fresh GPU is harmless).
    return True


def pending(state_dir: str) -> Tuple[str, ...]:
    """UUIDs of the GPUs with an intent on record (interrupted runs), sorted."""
    try:
        names = os.listdir(journal_dir(state_dir))
    except FileNotFoundError:
        return ()
    return tuple(sorted(n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(".")))


def set_aside(state_dir: str, uuid: str) -> Optional[str]:
    """Move GPU ``uuid``'s journal file to ``<name>.corrupt``; return the new path (None: no file)."""
    path = journal_path(state_dir, uuid)
    moved = path + ".corrupt"
    try:
        os.replace(path, moved)
    except FileNotFoundError:
        return None
    _fsync_dir(os.path.dirname(path))
    return moved
