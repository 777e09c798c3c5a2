"""The ``slurm-mig`` command line: a thin client of the library.

Commands compute a result (:mod:`slurm_mig.app.commands`), then :mod:`slurm_mig.app.render`
prints it as text or, with ``--json``, as JSON with stable keys.  One error handler
prints ``slurm-mig: error: <one line>`` and exits with the error's documented code
(docs/exit-codes.md); a broken pipe is quiet.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import click

from .. import __version__
from ..core.errors import (EXIT_INTERNAL, EXIT_PARTIAL, EXIT_REFUSED, EXIT_SLURM, EXIT_USAGE,
                           SimulatedCrash, SlurmMigError)
from ..core.inputs import MAX_GPU_INDEX, MAX_WAIT, NumberError, from_text, from_value, shown
from . import render


class Number(click.ParamType):
    """A bounded number option or argument, read by :mod:`slurm_mig.core.inputs`.

    click's ``int``/``float`` types accept other scripts' digits (``１``), ``1_000``,
    ``inf`` and ``nan``; this takes ASCII digits only, within [lo, hi]: exit 2 otherwise."""

    def __init__(self, lo, hi, *, whole: bool = True, kind: Optional[str] = None,
                 metavar: Optional[str] = None):
        self.lo, self.hi, self.whole, self.kind = lo, hi, whole, kind
        self.name = metavar or ("integer" if whole else "seconds")

    def convert(self, value, param, ctx):
        try:
            if isinstance(value, str):
                return from_text(value, self.lo, self.hi, whole=self.whole, kind=self.kind)
            return from_value(value, self.lo, self.hi, whole=self.whole, kind=self.kind)
        except NumberError as err:
            self.fail(f"{shown(value)} is {err}", param, ctx)


GPU_INDEX = Number(0, MAX_GPU_INDEX, kind="a GPU index")
INSTANCE_ID = Number(0, 1023, kind="an instance id")
PID = Number(1, 1 << 22, kind="a process id")  #: PID_MAX_LIMIT on 64-bit Linux
SANDBOX_NODES = Number(1, 32, kind="a node count")  #: sandbox.mig.MAX_NODES (a test pins it)


class Context:
    """What every command needs: the config, the chosen backend, the output mode."""

    def __init__(self, config_path: Optional[str], backend: Optional[str], as_json: bool, debug: bool):
        self.config_path = config_path
        self.backend_kind = backend
        self.as_json = as_json
        self.debug = debug
        self._config = None
        self._backend = None

    @property
    def config(self):
        if self._config is None:
            from dataclasses import replace

            from ..host.config import load_config, resolve_config_path

            config = load_config(resolve_config_path(self.config_path, os.environ))
            if self.backend_kind:
                config = replace(config, backend=self.backend_kind)
            self._config = config
        return self._config

    @property
    def backend(self):
        if self._backend is None:
            from ..gpu.backend import make_backend

            config = self.config
            if config.backend == "sim":
                ensure_simulator(config)
            self._backend = make_backend(config.backend, sim_root=config.sim.root)
        return self._backend

    def close(self):
        if self._backend is not None:
            self._backend.close()

    def emit(self, result: dict, text_renderer) -> None:
        if self.as_json:
            click.echo(render.as_json(result))
        else:
            click.echo(text_renderer(result))
        error = (result.get("metrics") or {}).get("error")
        if error:  # the command did its work; only its metrics are missing (docs/metrics.md)
            click.echo(f"slurm-mig: warning: {error}", err=True)


def ensure_simulator(config) -> None:
    """Create the configured simulated GPUs on first use, so ``--backend sim`` just works."""
    guest("sim").ensure(config.sim.root, config.sim.gpus)


def guest(name: str):
    """A guest's module (the simulator, the sandbox, the demo): by name, through the one door
    (:mod:`slurm_mig.core.guests`); imported only by the commands that need it."""
    from ..core.guests import visit

    return visit(name)


pass_ctx = click.make_pass_decorator(Context)


def _json_after(ctx: click.Context, _param, value: bool) -> None:
    if value:
        ctx.ensure_object(Context).as_json = True


class JsonCommand(click.Command):
    """A command that also takes ``--json`` after its name (``slurm-mig status --json``), as
    admins type it, with the same effect as ``slurm-mig --json status``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not any("--json" in getattr(p, "opts", ()) for p in self.params):
            self.params.append(click.Option(
                ["--json", "json_after"], is_flag=True, expose_value=False, callback=_json_after,
                help="print results as JSON (stable keys); the same as slurm-mig --json"))


class JsonGroup(click.Group):
    """Every command below it, in nested groups too, is a :class:`JsonCommand`."""

    command_class = JsonCommand
    group_class = type


@click.group(cls=JsonGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slurm-mig")
@click.option("--config", "config_path", metavar="PATH",
              help="config file (default: $SLURM_MIG_CONFIG or /etc/slurm-mig/config.toml)")
@click.option("--backend", type=click.Choice(["nvml", "sim"]), default=None,
              help="GPU backend, overriding the config: nvml (real GPUs) or sim (simulator)")
@click.option("--json", "as_json", is_flag=True, help="print results as JSON (stable keys)")
@click.option("--debug", is_flag=True, help="show tracebacks for errors")
@click.pass_context
def cli(ctx, config_path, backend, as_json, debug):
    """Dynamic NVIDIA MIG layouts for Slurm."""
    ctx.obj = Context(config_path, backend, as_json, debug)
    ctx.call_on_close(ctx.obj.close)


@cli.command()
@pass_ctx
def status(obj: Context):
    """Show GPUs, MIG mode, layouts and instances (ids, processes, device files)."""
    from .commands import status as run

    obj.emit(run(obj.config, obj.backend), render.status_text)


@cli.command()
@click.argument("model")
@click.option("--maximal", is_flag=True, help="only layouts to which no instance can be added")
@click.option("--no-me", is_flag=True, help="leave out +me (media extension) profiles")
@pass_ctx
def layouts(obj: Context, model, maximal, no_me):
    """List every valid layout of MODEL, one canonical layout per line."""
    from .commands import layouts as run

    obj.emit(run(model, maximal=maximal, include_me=not no_me), render.layouts_text)


@cli.command()
@click.argument("model", required=False)
@click.option("--verify", is_flag=True, help="compare the catalog with what NVML reports on this node")
@pass_ctx
def catalog(obj: Context, model, verify):
    """Show the catalog of MIG GPU models and profiles, or --verify it against NVML."""
    from . import commands

    if verify:
        obj.emit(commands.catalog_verify(obj.backend), render.verify_text)
    else:
        obj.emit(commands.catalog_models(model), render.catalog_text)


@cli.command()
@click.argument("layout")
@click.option("--gpu", default="all", show_default=True, help="GPU index, or 'all'")
@click.option("--dry-run", is_flag=True, help="print the steps, change nothing")
@click.option("--partial/--no-partial", default=None,
              help="apply what is possible when busy instances block the rest (exit 6); "
                   "default: [apply] partial in config.toml")
@pass_ctx
def apply(obj: Context, layout, gpu, dry_run, partial):
    """Make GPUs match LAYOUT (3g.40gb@0,1g.10gb@6 or 1g.10gb:2,3g.40gb:1 or empty).

    Instances in both layouts are kept; only idle instances are destroyed; a GPU that
    already matches is not touched.  An interrupted earlier apply is finished first.
    """
    from .commands import apply_layout

    config = obj.config
    if partial is None:
        partial = config.apply.partial
    result = apply_layout(config, obj.backend, layout, gpu, dry_run=dry_run, partial=partial)
    obj.emit(result, render.apply_text)
    if result["blocked"]:
        # A dry run exits as the real run would: refused without --partial.
        sys.exit(EXIT_PARTIAL if partial else EXIT_REFUSED)


@cli.group()
def sim():
    """Manage the GPU simulator (state under [sim] root)."""


@sim.command("init")
@click.argument("models", nargs=-1)
@click.option("--mig-off", is_flag=True, help="start with MIG mode disabled")
@pass_ctx
def sim_init(obj: Context, models, mig_off):
    """(Re)create simulated GPUs: MODELS or the config's [sim] gpus."""
    config = obj.config
    chosen = list(models) or list(config.sim.gpus)
    result = guest("sim").init(config.sim.root, chosen, mig_enabled=not mig_off)
    obj.emit(result, lambda r: f"simulated {len(r['gpus'])} GPU(s) under {r['root']}: "
             + ", ".join(r["gpus"]))


@sim.command("show")
@pass_ctx
def sim_show(obj: Context):
    """Print the simulator's whole state (JSON): GPUs, instances, processes, faults."""
    ensure_simulator(obj.config)
    click.echo(render.as_json(guest("sim").snapshot(obj.config.sim.root)))


@sim.command("attach")
@click.argument("gpu", type=GPU_INDEX)
@click.argument("gi_id", type=INSTANCE_ID)
@click.argument("pid", type=PID)
@click.option("--ci", "ci_id", type=INSTANCE_ID, default=0, show_default=True)
@pass_ctx
def sim_attach(obj: Context, gpu, gi_id, pid, ci_id):
    """Show process PID running on GPU instance GI_ID (makes it busy)."""
    ensure_simulator(obj.config)
    guest("sim").attach(obj.config.sim.root, gpu, gi_id, ci_id, pid)


@sim.command("detach")
@click.argument("gpu", type=GPU_INDEX)
@click.argument("gi_id", type=INSTANCE_ID)
@click.option("--pid", type=PID, default=None, help="only this process (default: all)")
@click.option("--ci", "ci_id", type=INSTANCE_ID, default=0, show_default=True)
@pass_ctx
def sim_detach(obj: Context, gpu, gi_id, pid, ci_id):
    """Stop showing processes on GPU instance GI_ID."""
    ensure_simulator(obj.config)
    guest("sim").detach(obj.config.sim.root, gpu, gi_id, ci_id, pid)


@cli.command()
@click.option("--root", default=None, help="the sandbox's directory (default "
              "/var/lib/slurm-mig-sandbox; with --no-slurm: a new directory under /tmp)")
@click.option("--no-slurm", is_flag=True, help="the simulator alone: no Slurm, no root needed")
@pass_ctx
def demo(obj: Context, root, no_slurm):
    """Walk through slurm-mig: a real local Slurm cluster on simulated GPUs, jobs on MIG instances."""
    code = guest("demo").run_demo(root, echo=click.echo, slurm=not no_slurm)
    if code:
        sys.exit(code)



@cli.command("accounting-tres")
@click.option("--models", default=None, metavar="MODEL,...",
              help="the cluster's GPU models (catalog keys, e.g. A100-80GB,H100-80GB)")
@click.option("--from-config", is_flag=True, help="the models of the config's [sim] gpus")
@click.option("--from-node", is_flag=True, help="the models of this node's GPUs (the driver's names)")
@click.option("--keep", default="", metavar="TRES,...",
              help="other TRES to keep (cpu,mem,energy,...), or your current "
                   "AccountingStorageTRES=... line to merge with")
@click.option("--no-aliases", is_flag=True,
              help="leave out the other names a driver may give a profile (3g.39gb for 3g.40gb)")
@click.option("--json", "as_json", is_flag=True, help="print JSON (stable keys)")
@pass_ctx
def accounting_tres_cmd(obj: Context, models, from_config, from_node, keep, no_aliases, as_json):
    """Print the AccountingStorageTRES line that makes sacct count each MIG type.

    Lists gres/gpu and gres/gpu:<profile> for every profile of the chosen models (default:
    every catalog model, with a warning).  docs/accounting.md.
    """
    from .commands import accounting_tres

    if sum((models is not None, from_config, from_node)) > 1:
        raise click.UsageError("choose one of --models, --from-config, --from-node")
    obj.as_json = obj.as_json or as_json
    result = accounting_tres(models, config=obj.config if from_config else None,
                             backend=obj.backend if from_node else None, keep=keep,
                             aliases=not no_aliases)
    obj.emit(result, render.accounting_tres_text)


def node_file_options(write_help: str):
    """gres-conf's and node-conf's options: --node, --write (``write_help``), --non-mig-type,
    --dry-run."""
    def decorate(f):
        f = click.option("--dry-run", is_flag=True,
                         help="with --write: say whether the file would change; write nothing")(f)
        f = click.option("--non-mig-type", default=None, metavar="TYPE",
                         help="gres Type= for GPUs not in MIG mode")(f)
        f = click.option("--write", is_flag=True, help=write_help)(f)
        return click.option("--node", default=None, help="node name (default: $SLURMD_NODENAME, "
                                                         "else the short host name)")(f)
    return decorate


def emit_node_file(obj: Context, make, text_renderer, preview_renderer, node, write, non_mig_type,
                   dry_run) -> None:
    """Run gres-conf's or node-conf's ``make`` (:mod:`slurm_mig.node.gresfiles`) for this
    node and print its result (``preview_renderer`` for ``--write --dry-run``)."""
    from ..host.config import node_name

    if dry_run and not write:
        raise click.UsageError("--dry-run goes with --write")
    result = make(obj.config, obj.backend, node_name(os.environ, node or obj.config.slurm.node_name),
                  write=write, non_mig_type=non_mig_type, dry_run=dry_run)
    obj.emit(result, preview_renderer if dry_run else text_renderer)


@cli.command("gres-conf")
@node_file_options("merge this node's lines into paths.gres_conf")
@pass_ctx
def gres_conf_cmd(obj: Context, node, write, non_mig_type, dry_run):
    """Print (or --write) this node's gres.conf lines, one per MIG instance."""
    from ..node.gresfiles import gres_conf

    emit_node_file(obj, gres_conf, render.gres_conf_text, render.gres_conf_preview_text,
                   node, write, non_mig_type, dry_run)


@cli.command("node-conf")
@node_file_options("merge this node's Gres= into paths.node_gres_include")
@pass_ctx
def node_conf_cmd(obj: Context, node, write, non_mig_type, dry_run):
    """Print (or --write) this node's slurm.conf line: NodeName=<node> Gres=gpu:<type>:<n>,..."""
    from ..node.gresfiles import node_conf

    emit_node_file(obj, node_conf, render.node_conf_text, render.node_conf_preview_text,
                   node, write, non_mig_type, dry_run)


@cli.command()
@pass_ctx
def prolog(obj: Context):
    """Slurm Prolog: make the job's MIG instances ready (env from slurmd).  See docs/hooks.md."""
    from ..hooks.run import run_hook

    sys.exit(run_hook("prolog", config=obj.config))


@cli.command()
@pass_ctx
def epilog(obj: Context):
    """Slurm Epilog: end the job's processes on its instances, drop its record."""
    from ..hooks.run import run_hook

    sys.exit(run_hook("epilog", config=obj.config))


@sim.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--out", default=None, metavar="FILE", help="write what the job reached here (JSON)")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def sim_run_cmd(obj: Context, out, command):
    """Inside a job: attach this process to the job's simulated instances, then run COMMAND."""
    from ..hooks.run import sim_run

    sim_run(obj.config, os.environ, list(command), out)


# ----------------------------------------------------------------------------- sandbox


def _sandbox_root(root):
    return os.path.abspath(root or guest("sandbox").DEFAULT_ROOT)


_root_option = click.option("--root", default=None, metavar="DIR",
                            help="the sandbox's directory (default /var/lib/slurm-mig-sandbox)")


@cli.group()
def sandbox():
    """A real local Slurm cluster with simulated MIG GPUs (root; docs/sandbox.md)."""


@sandbox.command("up")
@_root_option
@click.option("--nodes", type=SANDBOX_NODES, default=2, show_default=True,
              help="number of nodes (n1, n2, ...), 1 to 32")
@click.option("--gpus", default="A100-80GB", show_default=True, metavar="MODEL,...",
              help="simulated GPU models of each node")
@click.option("--layout", default="1g.10gb:4,3g.40gb:1", show_default=True,
              help="MIG layout of every GPU (either form of `apply`)")
@pass_ctx
def sandbox_up(obj: Context, root, nodes, gpus, layout):
    """Start the sandbox and its node timers (detached) and print the shell lines that point
    Slurm commands at it.

    The same options again while it runs do nothing; other options are refused until
    `sandbox down`.  `eval "$(slurm-mig sandbox up)"` sets SLURM_CONF in this shell.
    A --root that exists is used only if up made it (its marker .slurm-mig-sandbox, root's,
    not writable by others); up makes a missing one itself.
    """
    sandbox = guest("sandbox")
    spec = sandbox.SandboxSpec(_sandbox_root(root), nodes,
                               tuple(g.strip() for g in gpus.split(",") if g.strip()), layout)
    obj.emit(sandbox.up(spec), guest("sandbox.text").up_text)


@sandbox.command("status")
@_root_option
@click.option("--json", "as_json", is_flag=True, help="print JSON (stable keys)")
@pass_ctx
def sandbox_status(obj: Context, root, as_json):
    """Nodes, their gres, each node's MIG layout and which job holds which instance."""
    obj.as_json = obj.as_json or as_json
    obj.emit(guest("sandbox").status(_sandbox_root(root)), guest("sandbox.text").status_text)


@sandbox.command("reconfigure")
@_root_option
@pass_ctx
def sandbox_reconfigure(obj: Context, root):
    """Make Slurm read a changed gres.conf/node include (slurm.reconfigure_command of its nodes)."""
    obj.emit(guest("sandbox").reconfigure(_sandbox_root(root)),
             guest("sandbox.text").reconfigure_text)


@sandbox.command("down")
@_root_option
@click.option("--purge", is_flag=True, help="also remove the sandbox's directory")
@pass_ctx
def sandbox_down(obj: Context, root, purge):
    """Cancel jobs and stop every daemon of the sandbox (idempotent)."""
    obj.emit(guest("sandbox").down(_sandbox_root(root), purge=purge),
             guest("sandbox.text").down_text)


@cli.command("sync")
@click.option("--layout", default=None, metavar="LAYOUT",
              help="layout for every MIG GPU (default: [layout] in config.toml)")
@click.option("--wait", "wait_s", type=Number(0, MAX_WAIT, whole=False, kind="a number of seconds"),
              default=None, metavar="SECONDS",
              help="how long to wait for running jobs after draining (0: fail if busy; "
                   f"at most {MAX_WAIT}; default: [slurm] sync_wait)")
@click.option("--dry-run", is_flag=True, help="print the steps, change nothing (reads Slurm)")
@click.option("--node", default=None,
              help="Slurm node name (default: [slurm] node_name, $SLURMD_NODENAME, short host name)")
@click.option("--pending", is_flag=True,
              help="apply the layout rebalance left for this node in its Extra field, if any; "
                   "else publish the current layout there (docs/rebalance.md)")
@pass_ctx
def sync_cmd(obj: Context, layout, wait_s, dry_run, node, pending):
    """Drain, wait for idle, apply, rewrite gres.conf and Gres=, reconfigure, check, resume.

    A failure leaves the node drained with a reason that says what to do.  See docs/sync.md.
    """
    if pending:
        if layout is not None:
            raise click.UsageError("--pending takes the layout from rebalance; drop --layout")
        if wait_s is not None:
            raise click.UsageError("--pending never waits (a busy node is drained and the next "
                                   "run looks again); drop --wait")
        from .commands import sync_pending

        result = sync_pending(obj.config, obj.backend, os.environ, node=node, dry_run=dry_run)
        obj.emit(result, render.sync_pending_text)
        return
    from .commands import sync

    result = sync(obj.config, obj.backend, os.environ, node=node, layout=layout, wait=wait_s,
                  dry_run=dry_run)
    obj.emit(result, render.sync_text)


@cli.command("mode")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--gpu", default="all", show_default=True,
              help="GPU index, or 'all' (every MIG-capable GPU)")
@click.option("--reset", is_flag=True,
              help="reset a GPU whose change is still pending (Ampere), only if idle")
@click.option("--wait", "wait_s", type=Number(0, MAX_WAIT, whole=False, kind="a number of seconds"),
              default=None, metavar="SECONDS",
              help="how long to wait for running jobs after draining (default: [slurm] sync_wait)")
@click.option("--dry-run", is_flag=True, help="print the steps, change nothing (reads Slurm)")
@click.option("--node", default=None,
              help="Slurm node name (default: [slurm] node_name, $SLURMD_NODENAME, short host name)")
@pass_ctx
def mode_cmd(obj: Context, state, gpu, reset, wait_s, dry_run, node):
    """Turn MIG mode on or off: drain, wait for idle, (off: destroy idle instances), set
    the mode, reset only with --reset, rewrite gres.conf and Gres=, reconfigure, resume.

    A GPU with processes is refused (exit 5).  Ampere GPUs keep the change pending until
    a GPU reset; Hopper and later apply it at once.  See docs/mig-mode.md.
    """
    from .commands import mig_mode

    result = mig_mode(obj.config, obj.backend, os.environ, state == "on", gpu=gpu, reset=reset,
                      node=node, wait=wait_s, dry_run=dry_run)
    obj.emit(result, render.mode_text)


@cli.command("metrics")
@click.option("--textfile", "write", is_flag=True,
              help="also (re)write [metrics] textfile for node_exporter (atomically)")
@pass_ctx
def metrics_cmd(obj: Context, write):
    """This node's metrics in Prometheus' text format: what [metrics] textfile holds.

    The GPUs and MIG instances are read from the driver now, the counters (hooks, apply,
    sync, mode) from [metrics] state_file.  See docs/metrics.md.
    """
    from .commands import node_metrics

    result = node_metrics(obj.config, obj.backend, write=write)
    if obj.as_json:
        click.echo(render.as_json(result))
    else:
        click.echo(result["text"], nl=False)


@cli.command("rebalance")
@click.option("--dry-run", is_flag=True, help="plan and print, change nothing (reads Slurm)")
@click.option("--explain", is_flag=True, help="say why each node keeps or gets its layout")
@click.option("--last", is_flag=True,
              help="run nothing: show the decisions of the latest cycle that did something, "
                   "and when the latest cycle ran ([rebalance] state_file)")
@pass_ctx
def rebalance_cmd(obj: Context, dry_run, explain, last):
    """Controller side: re-plan idle nodes' MIG layouts from the pending queue.

    Drains each chosen node with a reason naming its new layout and leaves the layout in the
    node's Extra field; `slurm-mig sync --pending` on the node applies it.  Then, for every
    node that applied its layout: its Gres= in the node include, one reconfigure, resume.
    Exit 8 when finishing a node failed (it stays drained, its reason says what to do);
    exit 9 when Slurm could not be read (nothing planned or changed).  docs/rebalance.md.
    """
    if last:
        if dry_run:
            raise click.UsageError("--last runs nothing; drop --dry-run")
        from ..rebalance.cycle import read_last

        obj.emit(read_last(obj.config.rebalance.state_file), render.rebalance_last_text)
        return
    from .commands import rebalance

    result = rebalance(obj.config, os.environ, dry_run=dry_run)
    obj.emit(result, lambda r: render.rebalance_text(r, explain))
    if result["failed"]:
        sys.exit(EXIT_SLURM)


SECONDS = Number(0, 86400, whole=False, kind="a number of seconds")


@cli.command("simulate")
@click.argument("trace", required=False, metavar="TRACE")
@click.option("--cluster", "cluster_path", metavar="FILE",
              help="the cluster: TOML [[node]] tables (docs/simulate.md)")
@click.option("--config", "sim_config", metavar="FILE", default=None,
              help="rebalance settings (floors, cap, hysteresis, drain_mixed) as on the "
                   "controller (default: the global --config)")
@click.option("--policy", "policies", multiple=True,
              type=click.Choice(["static", "best-static", "dynamic"]),
              help="policy to run (repeatable; default all three)")
@click.option("--cycle", type=Number(1, 86400, whole=False, kind="a number of seconds"),
              default=60, show_default=True, help="seconds between two rebalance cycles")
@click.option("--instance-seconds", type=SECONDS, default=1.0, show_default=True,
              help="time to destroy or create one MIG instance")
@click.option("--reconfigure-seconds", type=SECONDS, default=4.0, show_default=True,
              help="Slurm reconfigure + node registration after a change")
@click.option("--apply-wait", type=SECONDS, default=None,
              help="seconds a cycle waits for a node to apply (default: [rebalance] apply_wait)")
@click.option("--reserve", type=Number(0, 1000, kind="a number of jobs"), default=1,
              show_default=True, help="backfill reservations per scheduling pass")
@click.option("--best-static-tries", type=Number(1, 1000, kind="a number of layouts"),
              default=4, show_default=True,
              help="single-layout choices simulated in full for best-static")
@click.option("--dynamic-from", type=click.Choice(["cluster", "best-static"]), default="cluster",
              show_default=True,
              help="dynamic starts from the cluster file's layouts or from best-static's")
@click.option("--plot", "plot_path", metavar="FILE.png", default=None,
              help="draw queue and instances per profile over time (needs matplotlib)")
@click.option("--generate", "generate_path", metavar="FILE", default=None,
              help="write a synthetic trace with shifting demand to FILE and stop")
@click.option("--gpus", type=Number(1, 1_000_000, kind="a number of GPUs"), default=None,
              help="--generate: GPUs to size the load for (default: the --cluster's)")
@click.option("--hours", type=Number(0.1, 24 * 366, whole=False, kind="a number of hours", metavar="hours"),
              default=72, show_default=True, help="--generate: trace length")
@click.option("--load", type=Number(0.01, 10, whole=False, kind="a load", metavar="share"), default=0.85,
              show_default=True, help="--generate: mean share of compute slices asked for")
@click.option("--seed", type=Number(0, 1 << 31, kind="a seed"), default=1, show_default=True)
@click.option("--phase-hours", type=Number(0.1, 24 * 366, whole=False, kind="a number of hours", metavar="hours"),
              default=6, show_default=True, help="--generate: length of each demand phase")
@click.option("--mean-minutes", type=Number(1, 100_000, whole=False, kind="a number of minutes",
                                                 metavar="minutes"),
              default=30, show_default=True, help="--generate: mean job duration")
@pass_ctx
def simulate_cmd(obj: Context, trace, cluster_path, sim_config, policies, cycle, instance_seconds,
                 reconfigure_seconds, apply_wait, reserve, best_static_tries, dynamic_from,
                 plot_path,
                 generate_path, gpus, hours, load, seed, phase_hours, mean_minutes):
    """Replay a job TRACE (CSV or sacct -X -P) on a model of the cluster under static,
    best-static and dynamic (the real planner and config) MIG layouts; compare wait and
    completion times.  docs/simulate.md.
    """
    from . import commands

    if generate_path:
        if gpus is None:
            if not cluster_path:
                raise click.UsageError("--generate needs --gpus N or --cluster FILE to size the load")
            from ..core.catalog import load_catalog
            from ..simulate.cluster import read_cluster

            gpus = sum(len(n.gpus) for n in read_cluster(
                commands._read_text(cluster_path, "cluster file", "see docs/simulate.md"),
                cluster_path, load_catalog()).nodes)
        result = commands.generate_trace(generate_path, gpus=gpus, hours=hours, seed=seed,
                                         load=load, phase_hours=phase_hours,
                                         mean_minutes=mean_minutes)
        obj.emit(result, render.generate_text)
        return
    if not trace or not cluster_path:
        raise click.UsageError("give a TRACE file and --cluster FILE (or --generate FILE)")
    from ..simulate.engine import Costs, Settings

    if plot_path:
        render.check_plot()  # before a run that may take minutes
    config = obj.config
    if sim_config:
        from ..host.config import load_config

        config = load_config(sim_config)
    costs = Costs(instance_s=instance_seconds, reconfigure_s=reconfigure_seconds,
                  apply_wait_s=config.rebalance.apply_wait if apply_wait is None else apply_wait)
    result = commands.simulate(config, trace, cluster_path,
                               policies=policies or ("static", "best-static", "dynamic"),
                               costs=costs, settings=Settings(cycle_s=cycle, reserve=reserve),
                               best_static_tries=best_static_tries, dynamic_from=dynamic_from)
    series = result.pop("series")
    if plot_path:
        commands.write_output(plot_path, render.simulate_plot(result, series), "plot")
        result["plot"] = plot_path
    obj.emit(result, render.simulate_text)


@cli.group("mig-parted")
def mig_parted():
    """NVIDIA mig-parted's config.yaml in and out (docs/mig-parted.md)."""


@mig_parted.command("import")
@click.argument("file", metavar="FILE")
@click.argument("name", metavar="CONFIG")
@click.option("--model", default=None, metavar="MODEL",
              help="resolve for one GPU of this catalog model (index 0) instead of this node's GPUs")
@click.option("--json", "as_json", is_flag=True, help="print JSON (stable keys)")
@pass_ctx
def mig_parted_import_cmd(obj: Context, file, name, model, as_json):
    """Print the layout per GPU that mig-parted config CONFIG of FILE (- : stdin) asks for.

    mig-parted's counts, placed as slurm-mig places a count form (instances a GPU has are
    kept where the counts allow).  Also prints the config.toml [layout] lines that ask
    for it; nothing is changed.
    """
    from .commands import mig_parted_import

    obj.as_json = obj.as_json or as_json
    if model is not None:
        result = mig_parted_import(file, name, model=model)
    else:
        result = mig_parted_import(file, name, config=obj.config, backend=obj.backend)
    obj.emit(result, render.mig_parted_import_text)


@mig_parted.command("export")
@click.option("--name", default="current", show_default=True,
              help="the config's label in the file (mig-parted's --config-label)")
@pass_ctx
def mig_parted_export_cmd(obj: Context, name):
    """Print this node's current MIG layout as a mig-parted config (YAML; --json: JSON)."""
    from .commands import mig_parted_export

    obj.emit(mig_parted_export(obj.backend, name), lambda r: r["yaml"].rstrip("\n"))


def main(argv=None) -> int:
    """Entry point: run the CLI, map errors to one line and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    _setup_logging(debug)
    try:
        cli.main(args=argv, prog_name="slurm-mig", standalone_mode=False)
    except SimulatedCrash:
        os._exit(137)  # the simulator's fault injection: die as a killed process would
    except SlurmMigError as err:
        if debug:
            import traceback

            traceback.print_exc()
        click.echo(f"slurm-mig: error: {err}", err=True)
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("slurm-mig: aborted", err=True)
        return 130
    except click.ClickException as err:
        click.echo(f"slurm-mig: error: {' '.join(err.format_message().split())}", err=True)
        return err.exit_code if err.exit_code else EXIT_USAGE
    except BrokenPipeError:
        _quiet_broken_pipe()
        return 0
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else 0
    except Exception as err:  # a bug: still one line, traceback with --debug
        if debug:
            raise
        click.echo(f"slurm-mig: internal error: {type(err).__name__}: {' '.join(str(err).split())} "
                   f"(rerun with --debug and report it)", err=True)
        return EXIT_INTERNAL
    return 0


def _setup_logging(debug: bool) -> None:
    """Library log lines go to stderr as ``slurm-mig: LEVEL: ...``; warnings that a command
    also reports in its result are not repeated unless --debug."""
    import logging

    logging.basicConfig(format="slurm-mig: %(levelname)s: %(message)s",
                        level=logging.DEBUG if debug else logging.ERROR)


def _quiet_broken_pipe() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
