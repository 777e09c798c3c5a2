"""The ``slurm-mig`` command line: click commands, the commands' results, their rendering
(docs/design.md)."""
