"""This node's GPUs and state: the apply engine, its journal, job records, the GPUs'
inventory and this node's generated Slurm files (docs/design.md)."""
