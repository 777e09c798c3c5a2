"""This host, safely: root-safe paths, atomic files, the node lock, the processes of jobs,
and the config file that says where everything is (docs/design.md, docs/security.md).

Imports only :mod:`slurm_mig.core`."""
