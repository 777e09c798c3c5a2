"""``slurm-mig rebalance``: the controller's cycle, its finish step and the pure planner
(docs/design.md, docs/rebalance.md)."""
