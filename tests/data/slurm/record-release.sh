#!/bin/bash
# Record one Slurm release's squeue/sinfo output (record.sh) and its controller facts
# (bench/slurm_facts.py) into OUTDIR, from inside that release's system:
#   mkdir -p /tmp/rec && SLURM_MIG_MATRIX_OUT=/tmp/rec \
#       bash .ci/matrix 24.11 --exec bash tests/data/slurm/record-release.sh /out/24.11
# (the host's 22.05: `bash tests/data/slurm/record-release.sh OUTDIR` from the checkout, .venv
# first on PATH).  Sandbox paths become /SANDBOX and the venv's python PYTHON, as in 22.05/.
set -euo pipefail
out=${1:?usage: record-release.sh OUTDIR}
root=/var/tmp/slurm-mig-json-rec
mkdir -p "$out"
slurm-mig sandbox up --root "$root" >/dev/null
export SLURM_CONF=$root/etc/slurm.conf
bash tests/data/slurm/record.sh "$root" "$out"
# n2 drained with its jobs gone: the drained node's gres in use.
for j in $(squeue -h -w n2 -t RUNNING -o %A); do scancel "$j"; done
sleep 4
sinfo -N --json > "$out/sinfo-N-drained.json"
scontrol show node -o > "$out/scontrol-show-node-drained.txt"
slurm-mig sandbox down --root "$root" --purge >/dev/null
unset SLURM_CONF
venv_python=$(python -c 'import sys; print(sys.executable)')
python - "$root" "$venv_python" "$out"/* <<'PY'
import sys
root, py, *files = sys.argv[1:]
for f in files:
    with open(f) as fh:
        t = fh.read()
    for a, b in ((root, "/SANDBOX"), (py, "PYTHON")):  # JSON may escape '/' as '\/'
        t = t.replace(a, b).replace(a.replace("/", "\\/"), b.replace("/", "\\/"))
    with open(f, "w") as fh:
        fh.write(t)
PY
python bench/slurm_facts.py > "$out/facts.txt"
echo "recorded into $out"
