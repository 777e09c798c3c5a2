#!/bin/bash
# Records squeue/sinfo output from a live `slurm-mig sandbox` for tests/test_slurm_json.py.
#   slurm-mig sandbox up --root /var/tmp/slurm-mig-json-rec     (as root; 2 nodes, 1g.10gb:4,3g.40gb:1)
#   SLURM_CONF=/var/tmp/slurm-mig-json-rec/etc/slurm.conf bash tests/data/slurm/record.sh /var/tmp/slurm-mig-json-rec OUTDIR
#   slurm-mig sandbox down --root /var/tmp/slurm-mig-json-rec --purge
# Fills every instance with long jobs, then submits one pending job per request form.
set -euo pipefail
root=$1; out=$2
job=$root/bin/sim-job
mkdir -p "$out"; cd "$root/jobs"
sub() { sbatch --parsable "$@" | cut -d';' -f1; }
# A second partition (n2 only), so a job can name two partitions.
scontrol create partitionname=big nodes=n2 state=up || true
# Fill: every 1g.10gb and 3g.40gb instance busy, except one 1g.10gb on n2 for the array's first task.
sub -J fill-n1-1g -w n1 --gres=gpu:1g.10gb:4 "$job" sleep 3600
sub -J fill-n2-1g -w n2 --gres=gpu:1g.10gb:3 "$job" sleep 3600
sub -J fill-n1-3g -w n1 --gres=gpu:3g.40gb:1 "$job" sleep 3600
sub -J fill-n2-3g -w n2 --gres=gpu:3g.40gb:1 "$job" sleep 3600
sleep 2
# Array: task 0 takes the last free 1g.10gb; 1-4 pend (split record).
sub -J arr-split --array=0-4 --gres=gpu:1g.10gb:1 "$job" sleep 3600
sleep 3
# One pending job per request form.
sub -J gres-1g-2   --gres=gpu:1g.10gb:2 "$job"
sub -J gres-3g-1   --gres=gpu:3g.40gb:1 "$job"
sub -J gpus-1g-1   --gpus=1g.10gb:1 "$job"
sub -J gpn-1g-1    --gpus-per-node=1g.10gb:1 "$job"
sub -J gpt-1g-1    --gpus-per-task=1g.10gb:1 -n 2 "$job"
sub -J arr-pct     --array=0-9%2 --gres=gpu:1g.10gb:1 "$job"
sub -J arr-list    --array=0,3,5-7 --gres=gpu:3g.40gb:1 "$job"
sub -J gres-untyped --gres=gpu:1 "$job"
sub -J gpus-untyped --gpus=2 "$job"
held=$(sub -J held -H --gres=gpu:1g.10gb:1 "$job")
sub -J nice        --nice=100 --gres=gpu:3g.40gb:1 "$job"
bumped=$(sub -J bumped --gres=gpu:1g.10gb:1 "$job")
scontrol update job="$bumped" priority=5000
sub -J multi       --gres=gpu:1g.10gb:1,gpu:3g.40gb:1 "$job"
sub -J two-nodes   -N 2 --gres=gpu:1g.10gb:1 "$job"
sub -J two-parts   -p debug,big --gres=gpu:1g.10gb:1 "$job"
sub -J gpus-multi  --gpus=1g.10gb:2,3g.40gb:1 "$job"
sub -J gps         --sockets-per-node=1 --gpus-per-socket=1g.10gb:1 "$job" || true
sub -J cpu-only    -n 8 -w n1 "$job" || true
# Per-node data in Slurm itself, and a draining node.
scontrol update nodename=n1 extra='slurm-mig:want=3g.40gb:2' comment='layout 1g.10gb:4,3g.40gb:1'
scontrol update nodename=n2 state=drain reason='slurm-mig: relayout to 3g.40gb:2'
sleep 4
v=$(sinfo --version | awk '{print $2}')
squeue --json > "$out/squeue.json"
squeue --json --states=PENDING > "$out/squeue-pending.json"
sinfo --json > "$out/sinfo.json"
sinfo -N --json > "$out/sinfo-N.json"
scontrol show node -o > "$out/scontrol-show-node.txt"
squeue -o '%i|%F|%K|%P|%T|%r|%Q|%b|%j' > "$out/squeue-table.txt"
scontrol show job -o > "$out/scontrol-show-job.txt"
echo "recorded Slurm $v into $out"
