"""The core: the vocabulary every layer shares, pure values and rules (docs/design.md).

Errors and their exit codes, bounded input numbers, the catalog of GPU models, layouts,
what a GPU backend reports, MIG device files and gres.conf records.  No driver, no Slurm,
no state on disk.  Imports nothing above itself.
"""
