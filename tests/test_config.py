"""The config file: strict, versioned, every error one line naming the key path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from slurm_mig.core.errors import EXIT_CONFIG, ConfigError
from slurm_mig.host.config import (DEFAULT_PATH, ApplySettings, Config, HostPaths, LayoutSettings,
                                   SimSettings, default_config, load_config, parse_config,
                                   resolve_config_path)

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "config.toml"


def parse(body: str) -> Config:
    return parse_config("version = 1\n" + body, "config.toml")


def error_of(body: str, versioned: bool = True) -> str:
    text = ("version = 1\n" + body) if versioned else body
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config.toml:")
    assert info.value.exit_code == EXIT_CONFIG
    return message


def test_version_alone_gives_the_defaults():
    assert parse("") == default_config()


def test_defaults():
    c = default_config()
    assert c.backend == "nvml"
    assert c.paths == HostPaths(
        dev="/dev",
        proc="/proc",
        state_dir="/var/lib/slurm-mig",
        run_dir="/run/slurm-mig",
        slurm_conf_dir="/etc/slurm",
        gres_conf="/etc/slurm/gres.conf",
        node_gres_include="/etc/slurm/slurm-mig-nodes.conf",
    )
    assert c.sim == SimSettings(root="/var/lib/slurm-mig/sim", gpus=("A100-40GB", "A100-40GB"))
    assert c.layout == LayoutSettings(default=None, gpus=())
    assert c.apply == ApplySettings(partial=False, lock_timeout=60)
    assert c.layout_for(0) is None


def test_full_config_is_read():
    c = parse(
        """
backend = "sim"
[paths]
dev = "/d"
proc = "/p"
state_dir = "/s"
run_dir = "/r"
slurm_conf_dir = "/etc/slurm2"
gres_conf = "/g/gres.conf"
node_gres_include = "/g/nodes.conf"
[sim]
root = "/sim"
gpus = ["NVIDIA A100-SXM4-40GB", "H100-80GB"]
[layout]
default = "1g.10gb:7"
[layout.gpus]
1 = "3g.40gb:2"
"0" = "empty"
[apply]
partial = true
lock_timeout = 2.5
"""
    )
    assert c.backend == "sim"
    assert c.paths == HostPaths("/d", "/p", "/s", "/r", "/etc/slurm2", "/g/gres.conf", "/g/nodes.conf")
    assert c.sim == SimSettings(root="/sim", gpus=("A100-40GB", "H100-80GB"))
    assert c.layout.gpus == ((0, "empty"), (1, "3g.40gb:2"))
    assert c.apply == ApplySettings(partial=True, lock_timeout=2.5)


def test_layout_for_prefers_the_per_gpu_entry():
    c = parse('[layout]\ndefault = "1g.10gb:7"\n[layout.gpus]\n1 = "3g.40gb:2"\n')
    assert c.layout_for(0) == "1g.10gb:7"
    assert c.layout_for(1) == "3g.40gb:2"


def test_root_prefixes_every_path():
    c = parse('[paths]\nroot = "/tmp/t"\ndev = "/devices"\n')
    assert c.paths == HostPaths(
        dev="/tmp/t/devices",
        proc="/tmp/t/proc",
        state_dir="/tmp/t/var/lib/slurm-mig",
        run_dir="/tmp/t/run/slurm-mig",
        slurm_conf_dir="/tmp/t/etc/slurm",
        gres_conf="/tmp/t/etc/slurm/gres.conf",
        node_gres_include="/tmp/t/etc/slurm/slurm-mig-nodes.conf",
    )
    assert c.sim.root == "/tmp/t/var/lib/slurm-mig/sim"


def test_root_prefixes_an_explicit_sim_root():
    c = parse('[paths]\nroot = "/tmp/t/"\n[sim]\nroot = "/simstate"\n')
    assert c.sim.root == "/tmp/t/simstate"


def test_slurm_files_follow_slurm_conf_dir():
    c = parse('[paths]\nslurm_conf_dir = "/opt/slurm/etc"\n')
    assert c.paths.gres_conf == "/opt/slurm/etc/gres.conf"
    assert c.paths.node_gres_include == "/opt/slurm/etc/slurm-mig-nodes.conf"


def test_sim_root_follows_state_dir():
    assert parse('[paths]\nstate_dir = "/srv/mig"\n').sim.root == "/srv/mig/sim"


@pytest.mark.parametrize(
    "body, path, known",
    [
        ("colour = 1\n", "colour", "apply, backend, hooks, layout, metrics, paths, rebalance, sim, slurm, "
                                    "version"),
        ("[apply]\npartiall = true\n", "apply.partiall", "lock_timeout, partial"),
        ("[paths]\ndevs = '/dev'\n", "paths.devs", "dev, gres_conf"),
        ("[sim]\nmodels = []\n", "sim.models", "gpus, root"),
        ("[layout]\ndefualt = 'x'\n", "layout.defualt", "default, gpus"),
        ("[extra]\n", "extra", "apply, backend"),
    ],
)
def test_unknown_key_names_its_path(body, path, known):
    message = error_of(body)
    assert f"unknown key '{path}'" in message
    assert f"(known: {known}" in message


def test_unknown_key_message_matches_the_documented_form():
    assert error_of("[apply]\npartiall = true\n") == (
        "config.toml: unknown key 'apply.partiall' (known: lock_timeout, partial)"
    )


def test_bad_backend_lists_the_choices():
    assert error_of('backend = "gpu"\n') == "config.toml: backend: 'gpu' is not one of nvml, sim"


def test_missing_version_says_how_to_fix():
    assert error_of('backend = "nvml"\n', versioned=False) == (
        "config.toml: version: missing; add version = 1"
    )


def test_newer_version_is_refused():
    assert error_of("version = 2\n", versioned=False) == (
        "config.toml: version 2 is not supported (this slurm-mig reads version 1)"
    )


def test_version_must_be_an_integer():
    assert "version: expected an integer, got '1'" in error_of('version = "1"\n', versioned=False)


@pytest.mark.parametrize(
    "body, expected",
    [
        ("[apply]\nlock_timeout = 'abc'\n", "apply.lock_timeout: 'abc' is not a number of seconds (0 to 3600)"),
        ("[apply]\nlock_timeout = true\n", "apply.lock_timeout: True is not a number of seconds (0 to 3600)"),
        ("[apply]\nlock_timeout = -1\n", "apply.lock_timeout: -1 is not a number of seconds (0 to 3600)"),
        ("[apply]\nlock_timeout = nan\n", "apply.lock_timeout: nan is not a number of seconds (0 to 3600)"),
        ("[apply]\npartial = 'yes'\n", "apply.partial: expected true or false, got 'yes'"),
        ("backend = 1\n", "backend: expected a string, got 1"),
        ("paths = 'x'\n", "paths: expected a table, got 'x'"),
        ("[paths]\ndev = 5\n", "paths.dev: expected a string, got 5"),
        ("[sim]\ngpus = 'A100-40GB'\n", "sim.gpus: expected a list of GPU models"),
        ("[sim]\ngpus = ['A100-40GB', 3]\n", "sim.gpus[1]: expected a string, got 3"),
        ("[layout]\ngpus = 'x'\n", "layout.gpus: expected a table"),
        ("[layout]\ndefault = 7\n", "layout.default: expected a string, got 7"),
        ("[layout.gpus]\n0 = 7\n", "layout.gpus.0: expected a string, got 7"),
    ],
)
def test_wrong_type_names_the_key(body, expected):
    assert expected in error_of(body)


@pytest.mark.parametrize("key", ["dev", "proc", "state_dir", "run_dir", "slurm_conf_dir", "gres_conf", "node_gres_include", "root"])
def test_relative_path_is_refused_naming_its_key(key):
    message = error_of(f'[paths]\n{key} = "relative/dir"\n')
    assert f"paths.{key}: 'relative/dir' is not an absolute path" in message


def test_relative_sim_root_is_refused():
    assert "sim.root: 'sim' is not an absolute path" in error_of('[sim]\nroot = "sim"\n')


def test_toml_syntax_error_is_chained_with_line_info():
    with pytest.raises(ConfigError) as info:
        parse_config("version = 1\n[apply\n", "config.toml")
    message = str(info.value)
    assert message.startswith("config.toml: not valid TOML:")
    assert "line 2" in message
    assert "\n" not in message
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("key", ["x", "-1", "01", "1.0"])
def test_layout_gpus_key_must_be_a_gpu_index(key):
    message = error_of(f'[layout.gpus]\n"{key}" = "1g.10gb:7"\n')
    assert f"layout.gpus: key '{key}' is not a GPU index" in message


@pytest.mark.parametrize("body, key", [
    ('[layout]\ndefault = ""\n', "layout.default"),
    ('[layout.gpus]\n3 = "  "\n', "layout.gpus.3"),
])
def test_empty_layout_text_is_refused(body, key):
    assert f"{key}: empty;" in error_of(body)


def test_layout_text_is_not_checked_against_a_model_here():
    assert parse('[layout]\ndefault = "9g.999gb:1"\n').layout.default == "9g.999gb:1"


def test_sim_backend_needs_gpus():
    assert error_of('backend = "sim"\n[sim]\ngpus = []\n') == (
        "config.toml: sim.gpus: empty but backend is 'sim'; list at least one GPU model"
    )


def test_empty_sim_gpus_is_fine_for_nvml():
    assert parse("[sim]\ngpus = []\n").sim.gpus == ()


def test_unknown_sim_model_names_its_index():
    with pytest.raises(ConfigError) as info:
        parse_config('version = 1\n[sim]\ngpus = ["A100-40GB", "A200"]\n', "config.toml")
    message = str(info.value)
    assert message.startswith("config.toml: sim.gpus[1]: unknown GPU model 'A200'")
    assert "\n" not in message
    assert info.value.__cause__ is not None


def test_load_reads_the_given_file(tmp_path):
    f = tmp_path / "config.toml"
    f.write_text('version = 1\n[apply]\npartial = true\n')
    c = load_config(str(f))
    assert c.apply.partial is True
    assert c.source == str(f)


def test_error_names_the_loaded_file(tmp_path):
    f = tmp_path / "site.toml"
    f.write_text("version = 1\nbogus = 1\n")
    with pytest.raises(ConfigError, match=re.escape(f"{f}: unknown key 'bogus'")):
        load_config(str(f))


def test_explicit_missing_file_is_an_error(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(str(missing))
    assert str(missing) in str(info.value)


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr("slurm_mig.host.config.DEFAULT_PATH", str(tmp_path / "absent.toml"))
    assert load_config(None) == default_config()


def test_unreadable_file_is_a_chained_config_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "f" / "config.toml"))  # ENOTDIR
    assert isinstance(info.value.__cause__, OSError)


def test_non_utf8_file_is_a_config_error(tmp_path):
    f = tmp_path / "config.toml"
    f.write_bytes(b"version = 1\n# \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(f))


def test_config_path_comes_from_option_then_environment():
    assert resolve_config_path("/a.toml", {"SLURM_MIG_CONFIG": "/b.toml"}) == "/a.toml"
    assert resolve_config_path(None, {"SLURM_MIG_CONFIG": "/b.toml"}) == "/b.toml"
    assert resolve_config_path(None, {"SLURM_MIG_CONFIG": ""}) is None
    assert resolve_config_path(None, {}) is None
    assert DEFAULT_PATH == "/etc/slurm-mig/config.toml"


def test_example_config_parses():
    assert load_config(str(EXAMPLE)) == default_config()


def test_example_config_documents_every_key_with_its_default():
    """Uncommenting every `# key = value` line must still parse: each documented key is real."""
    text = re.sub(r"(?m)^# (\w+ = .*)$", r"\1", EXAMPLE.read_text())
    c = parse_config(text, str(EXAMPLE))
    assert c.paths == default_config().paths
    assert c.sim == default_config().sim
    assert c.apply == default_config().apply
    assert c.layout_for(0) == "3g.40gb:2"
    assert c.layout_for(1) == "empty"
    assert c.layout_for(2) == "1g.10gb:7"


def test_slurm_section_defaults_and_values():
    from slurm_mig.host.config import parse_config

    c = parse_config("version = 1\n", "t.toml")
    assert c.slurm.reconfigure_command == ("scontrol", "reconfigure") and c.slurm.node_name is None
    c = parse_config('version = 1\n[slurm]\nnode_name = "n1"\nreconfigure_command = ["/x/re", "-a"]\n'
                     "sync_wait = 5\n", "t.toml")
    assert c.slurm.node_name == "n1" and c.slurm.reconfigure_command == ("/x/re", "-a")
    assert c.slurm.sync_wait == 5


@pytest.mark.parametrize("body, fragment", [
    ('reconfigure_command = "scontrol reconfigure"', "slurm.reconfigure_command: expected a non-empty list"),
    ('node_name = "n1; rm"', "slurm.node_name: 'n1; rm' is not a Slurm node name"),
    ("sync_wait = -1", "slurm.sync_wait: -1 is not a number of seconds (0 to 2592000)"),
    ("wait = 1", "unknown key 'slurm.wait'"),
])
def test_slurm_section_errors_name_the_key(body, fragment):
    from slurm_mig.host.config import parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(f"version = 1\n[slurm]\n{body}\n", "t.toml")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_hooks_section():
    from slurm_mig.host.config import parse_config

    c = parse_config("version = 1\n[hooks]\nepilog_wipe = true\nkill_grace = 2\n", "t.toml")
    assert c.hooks.epilog_wipe is True and c.hooks.kill_grace == 2
    with pytest.raises(ConfigError, match="hooks.epilog_wipe: expected true or false"):
        parse_config('version = 1\n[hooks]\nepilog_wipe = "yes"\n', "t.toml")


def test_rebalance_apply_wait_defaults_to_90_seconds_and_names_its_key_when_bad():
    from slurm_mig.host.config import parse_config

    assert parse_config("version = 1\n", "t.toml").rebalance.apply_wait == 90
    assert parse_config("version = 1\n[rebalance]\napply_wait = 0\n", "t.toml").rebalance.apply_wait == 0
    with pytest.raises(ConfigError, match=r"t.toml: rebalance.apply_wait: -5 is not a number of seconds \(0 to 3600\)"):
        parse_config("version = 1\n[rebalance]\napply_wait = -5\n", "t.toml")
    with pytest.raises(ConfigError, match=r"rebalance.apply_wait: 'soon' is not a number of seconds"):
        parse_config('version = 1\n[rebalance]\napply_wait = "soon"\n', "t.toml")
