"""The one door to the guests: production code reaches the simulator and the sandbox only here.

The simulator (:mod:`slurm_mig.sim`) and the sandbox (:mod:`slurm_mig.sandbox`, with
``slurm-mig demo``) are guests (docs/design.md, "The simulator is a guest"): they import
the layers they stand in for or drive; no production module imports them, at module level
or inside a function.  Where production code must hand over to one (the backend factory for
``backend = "sim"``, the CLI's ``sim``, ``sandbox`` and ``demo`` commands, ``python -m
slurm_mig.hooks sim-run``) it calls :func:`visit` with a name from :data:`GUESTS`, and only
then is the guest imported.  ``tests/test_architecture.py`` walks every production module's
imports and fails on any other way in, and on a guest module named anywhere but here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: What production code may ask for, by name -> the guest module that answers.
GUESTS = {
    "sim": "slurm_mig.sim.entry",  #: the simulator's surface: backend, init, show, attach, run
    "sandbox": "slurm_mig.sandbox.mig",  #: sandbox up, status, reconfigure, down
    "sandbox.text": "slurm_mig.sandbox.text",  #: the sandbox commands' text output
    "demo": "slurm_mig.sandbox.demo",  #: slurm-mig demo
}


def visit(name: str) -> ModuleType:
    """The guest module registered as ``name`` in :data:`GUESTS`, imported now."""
    return importlib.import_module(GUESTS[name])
