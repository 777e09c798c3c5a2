"""A layout change through Slurm: the steps ``sync``, ``sync --pending`` and rebalance share,
the drain reasons and the controller-node channel (docs/design.md, docs/sync.md)."""
