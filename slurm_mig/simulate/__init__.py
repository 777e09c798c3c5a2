"""``slurm-mig simulate``: what dynamic MIG would have done on a job trace (docs/simulate.md).

Pure modules: :mod:`.trace` (reading traces), :mod:`.cluster` (the cluster file),
:mod:`.engine` (the event-driven scheduler and layout changes), :mod:`.policies` (static,
best-static, the real planner), :mod:`.generate` (a trace with shifting demand),
:mod:`.run` (every policy and its metrics).  The command (:mod:`slurm_mig.app.commands`)
reads the files; :mod:`slurm_mig.app.render` prints and plots.
"""
