"""mig-parted's config.yaml in and out (slurm_mig/core/migparted.py, docs/mig-parted.md).

USUAL is what NVIDIA's own configs ask of each catalog model: the names and counts of
deployments/systemd/config-default.yaml in github.com/NVIDIA/mig-parted (read at commit
bd7160f, August 2026), each model's entries picked out by the PCI ids in their
``device-filter``.  The tests write those configs in the same shape (one entry per model,
filtered on the model's PCI ids) and resolve them for every model.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from slurm_mig.core.catalog import load_catalog
from slurm_mig.core.errors import EXIT_USAGE, InputError
from slurm_mig.core.layout import (check_layout, enumerate_layouts, format_layout,
                                   parse_layout, resolve_counts)
from slurm_mig.core.migparted import (GpuState, Target, export_entries, parse_text,
                                      render_yaml, resolve, spec_dict)

CATALOG = load_catalog()
MODELS = [m.key for m in CATALOG.models]

USUAL = {
    "A100-40GB": {
        "all-1g.5gb": {"1g.5gb": 7}, "all-1g.5gb.me": {"1g.5gb+me": 1},
        "all-1g.10gb": {"1g.10gb": 4}, "all-2g.10gb": {"2g.10gb": 3},
        "all-3g.20gb": {"3g.20gb": 2}, "all-4g.20gb": {"4g.20gb": 1},
        "all-7g.40gb": {"7g.40gb": 1},
        "all-balanced": {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1},
    },
    "A100-80GB": {
        "all-1g.10gb": {"1g.10gb": 7}, "all-1g.10gb.me": {"1g.10gb+me": 1},
        "all-1g.20gb": {"1g.20gb": 4}, "all-2g.20gb": {"2g.20gb": 3},
        "all-3g.40gb": {"3g.40gb": 2}, "all-4g.40gb": {"4g.40gb": 1},
        "all-7g.80gb": {"7g.80gb": 1},
        "all-balanced": {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},
    },
    "H100-80GB": {
        "all-1g.10gb": {"1g.10gb": 7}, "all-1g.10gb.me": {"1g.10gb+me": 1},
        "all-1g.20gb": {"1g.20gb": 4}, "all-2g.20gb": {"2g.20gb": 3},
        "all-3g.40gb": {"3g.40gb": 2}, "all-4g.40gb": {"4g.40gb": 1},
        "all-7g.80gb": {"7g.80gb": 1},
        "all-balanced": {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1},
    },
    "H100-NVL": {
        "all-1g.12gb": {"1g.12gb": 7}, "all-1g.12gb.me": {"1g.12gb+me": 1},
        "all-1g.24gb": {"1g.24gb": 4}, "all-2g.24gb": {"2g.24gb": 3},
        "all-3g.47gb": {"3g.47gb": 2}, "all-4g.47gb": {"4g.47gb": 1},
        "all-7g.94gb": {"7g.94gb": 1},
        "all-balanced": {"1g.12gb": 2, "2g.24gb": 1, "3g.47gb": 1},
    },
    "GH200-96GB": {
        "all-1g.12gb": {"1g.12gb": 7}, "all-1g.12gb.me": {"1g.12gb+me": 1},
        "all-1g.24gb": {"1g.24gb": 4}, "all-2g.24gb": {"2g.24gb": 3},
        "all-3g.48gb": {"3g.48gb": 2}, "all-4g.48gb": {"4g.48gb": 1},
        "all-7g.96gb": {"7g.96gb": 1},
        "all-balanced": {"1g.12gb": 2, "2g.24gb": 1, "3g.48gb": 1},
    },
    "GH200-144GB": {
        "all-1g.18gb": {"1g.18gb": 7}, "all-1g.18gb.me": {"1g.18gb+me": 1},
        "all-1g.36gb": {"1g.36gb": 4}, "all-2g.36gb": {"2g.36gb": 3},
        "all-3g.72gb": {"3g.72gb": 2}, "all-4g.72gb": {"4g.72gb": 1},
        "all-7g.144gb": {"7g.144gb": 1},
        "all-balanced": {"1g.18gb": 2, "2g.36gb": 1, "3g.72gb": 1},
    },
    "H200": {
        "all-1g.18gb": {"1g.18gb": 7}, "all-1g.18gb.me": {"1g.18gb+me": 1},
        "all-1g.35gb": {"1g.35gb": 4}, "all-2g.35gb": {"2g.35gb": 3},
        "all-3g.71gb": {"3g.71gb": 2}, "all-4g.71gb": {"4g.71gb": 1},
        "all-7g.141gb": {"7g.141gb": 1},
        "all-balanced": {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1},
    },
    "H20": {
        "all-1g.12gb": {"1g.12gb": 7}, "all-1g.12gb.me": {"1g.12gb+me": 1},
        "all-1g.24gb": {"1g.24gb": 4}, "all-2g.24gb": {"2g.24gb": 3},
        "all-3g.48gb": {"3g.48gb": 2}, "all-4g.48gb": {"4g.48gb": 1},
        "all-7g.96gb": {"7g.96gb": 1},
        "all-balanced": {"1g.12gb": 2, "2g.24gb": 1, "3g.48gb": 1},
    },
    "B200": {
        "all-1g.23gb": {"1g.23gb": 7}, "all-1g.23gb.me": {"1g.23gb+me": 1},
        "all-1g.45gb": {"1g.45gb": 4}, "all-2g.45gb": {"2g.45gb": 3},
        "all-3g.90gb": {"3g.90gb": 2}, "all-4g.90gb": {"4g.90gb": 1},
        "all-7g.180gb": {"7g.180gb": 1},
        "all-balanced": {"1g.23gb": 2, "2g.45gb": 1, "3g.90gb": 1},
    },
    "GB200": {
        "all-1g.23gb": {"1g.23gb": 7}, "all-1g.23gb.me": {"1g.23gb+me": 1},
        "all-1g.47gb": {"1g.47gb": 4}, "all-2g.47gb": {"2g.47gb": 3},
        "all-3g.93gb": {"3g.93gb": 2}, "all-4g.93gb": {"4g.93gb": 1},
        "all-7g.186gb": {"7g.186gb": 1},
        "all-balanced": {"1g.23gb": 2, "2g.47gb": 1, "3g.93gb": 1},
    },
    "RTX-PRO-6000": {
        "all-1g.24gb": {"1g.24gb": 4}, "all-1g.24gb.me": {"1g.24gb+me": 1},
        "all-1g.24gb.gfx": {"1g.24gb+gfx": 4}, "all-1g.24gb.me.all": {"1g.24gb+me.all": 1},
        "all-1g.24gb-me": {"1g.24gb-me": 4}, "all-2g.48gb": {"2g.48gb": 2},
        "all-2g.48gb.gfx": {"2g.48gb+gfx": 2}, "all-2g.48gb.me.all": {"2g.48gb+me.all": 1},
        "all-2g.48gb-me": {"2g.48gb-me": 2}, "all-4g.96gb": {"4g.96gb": 1},
        "all-4g.96gb.gfx": {"4g.96gb+gfx": 1},
        "all-balanced": {"1g.24gb": 2, "2g.48gb": 1},
    },
    "A30": {
        "all-1g.6gb": {"1g.6gb": 4}, "all-1g.6gb.me": {"1g.6gb+me": 1},
        "all-2g.12gb": {"2g.12gb": 2}, "all-2g.12gb.me": {"2g.12gb+me": 1},
        "all-4g.24gb": {"4g.24gb": 1},
        "all-balanced": {"1g.6gb": 2, "2g.12gb": 1},
    },
}


def usual_configs_yaml() -> str:
    """NVIDIA's usual configs, shaped as config-default.yaml: all-disabled and all-enabled
    for every GPU, then one entry per model for each other name, filtered on its PCI ids."""
    lines = ["version: v1", "mig-configs:",
             "  all-disabled:", "    - devices: all", "      mig-enabled: false",
             "  all-enabled:", "    - devices: all", "      mig-enabled: true",
             "      mig-devices: {}"]
    names = sorted({n for configs in USUAL.values() for n in configs})
    for name in names:
        lines.append(f"  {name}:")
        for key, configs in USUAL.items():
            if name not in configs:
                continue
            ids = ", ".join(f'"{i}"' for i in CATALOG.model(key).pci_device_ids)
            lines += [f"    # {key}", f"    - device-filter: [{ids}]", "      devices: all",
                      "      mig-enabled: true", "      mig-devices:"]
            lines += [f'        "{p}": {n}' for p, n in configs[name].items()]
    return "\n".join(lines) + "\n"


USUAL_SPEC = parse_text(usual_configs_yaml(), "usual.yaml")


def one_gpu(key: str, index: int = 0, **kw) -> Target:
    model = CATALOG.model(key)
    return Target(index, model.name, model, model.pci_device_ids, **kw)


def error_of(text: str, name: str = "c", targets=None, source: str = "config.yaml") -> str:
    """Resolve config ``name`` of ``text``; expect an InputError; its one line."""
    with pytest.raises(InputError) as info:
        resolve(parse_text(textwrap.dedent(text), source), name,
                targets if targets is not None else [one_gpu("A100-80GB")])
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == EXIT_USAGE
    return message


# ----------------------------------------------------------------------------- NVIDIA's usual configs


@pytest.mark.parametrize("key", MODELS)
def test_usual_configs_resolve_to_valid_layouts_with_their_counts(key):
    model = CATALOG.model(key)
    for name, wanted in USUAL[key].items():
        (plan,) = resolve(USUAL_SPEC, name, [one_gpu(key)])
        assert plan.mig_enabled is True and plan.model == key
        check_layout(model, plan.layout)  # raises if not valid
        assert plan.layout.counts() == {model.profile(p).name: n for p, n in wanted.items()}
    (off,) = resolve(USUAL_SPEC, "all-disabled", [one_gpu(key)])
    assert (off.mig_enabled, off.layout) == (False, None)
    (empty,) = resolve(USUAL_SPEC, "all-enabled", [one_gpu(key)])
    assert empty.mig_enabled is True and len(empty.layout) == 0


@pytest.mark.parametrize("key", MODELS)
def test_each_model_takes_the_entry_filtered_on_its_own_pci_ids(key):
    (plan,) = resolve(USUAL_SPEC, "all-balanced", [one_gpu(key)])
    configs = dict(USUAL_SPEC.configs)["all-balanced"]
    (chosen,) = [e for e in configs if e.where == plan.entry]
    assert set(CATALOG.model(key).pci_device_ids) == {f.text for f in chosen.device_filter}


def test_counts_are_placed_as_apply_places_the_same_count_form():
    model = CATALOG.model("A100-80GB")
    (plan,) = resolve(USUAL_SPEC, "all-balanced", [one_gpu("A100-80GB")])
    assert plan.layout == parse_layout("1g.10gb:2,2g.20gb:1,3g.40gb:1", model)
    assert format_layout(plan.layout) == "1g.10gb@0,1g.10gb@1,2g.20gb@2,3g.40gb@4"


def test_a_gpu_keeps_its_instances_where_the_counts_allow():
    model = CATALOG.model("A100-80GB")
    current = parse_layout("2g.20gb@0,1g.10gb@2,1g.10gb@3,3g.40gb@4", model)
    (plan,) = resolve(USUAL_SPEC, "all-balanced", [one_gpu("A100-80GB", current=current)])
    assert plan.layout == current
    (fresh,) = resolve(USUAL_SPEC, "all-balanced", [one_gpu("A100-80GB")])
    assert fresh.layout != current


# ----------------------------------------------------------------------------- semantics


NODE = [one_gpu("A100-80GB", 0), one_gpu("A100-80GB", 1), one_gpu("A100-40GB", 2),
        one_gpu("A30", 3)]


def test_devices_lists_and_the_last_entry_that_covers_a_gpu_decides():
    spec = parse_text(textwrap.dedent("""\
        version: v1
        mig-configs:
          mixed:
            - devices: all
              mig-enabled: false
            - devices: [1]
              mig-enabled: true
              mig-devices: {"7g.80gb": 1, "7g.40gb": 0}
            - device-filter: "0x20B010DE"
              devices: all
              mig-enabled: true
              mig-devices: {"7g.40gb": 1}
        """), "f.yaml")
    plans = resolve(spec, "mixed", NODE)
    assert [(p.mig_enabled, p.layout and format_layout(p.layout)) for p in plans] == [
        (False, None), (True, "7g.80gb@0"), (True, "7g.40gb@0"), (False, None)]
    assert [p.entry for p in plans] == ["mig-configs.mixed[0]", "mig-configs.mixed[1]",
                                        "mig-configs.mixed[2]", "mig-configs.mixed[0]"]


def test_a_gpu_no_entry_covers_is_left_alone():
    spec = parse_text("version: v1\nmig-configs:\n  c:\n    - devices: [0]\n"
                      "      mig-enabled: true\n      mig-devices: {}\n", "f.yaml")
    plans = resolve(spec, "c", NODE[:2])
    assert (plans[1].entry, plans[1].mig_enabled, plans[1].layout) == (None, None, None)
    assert "left alone" in plans[1].note
    assert plans[0].mig_enabled is True and len(plans[0].layout) == 0


def test_mig_enabled_without_mig_devices_means_mig_on_with_no_instances():
    spec = parse_text("version: v1\nmig-configs:\n  c:\n    - devices: all\n"
                      "      mig-enabled: true\n", "f.yaml")
    (plan,) = resolve(spec, "c", [one_gpu("H100-80GB")])
    assert plan.mig_enabled is True and len(plan.layout) == 0


def test_driver_aliases_and_full_size_compute_instance_names_are_accepted():
    spec = parse_text('version: v1\nmig-configs:\n  c:\n    - devices: all\n'
                      '      mig-enabled: true\n'
                      '      mig-devices: {"3g.39gb": 1, "4c.4g.40gb": 1}\n', "f.yaml")
    (plan,) = resolve(spec, "c", [one_gpu("A100-80GB")])
    assert format_layout(plan.layout) == "4g.40gb@0,3g.40gb@4"


def test_a_json_config_is_read_too():
    text = json.dumps({"version": "v1", "mig-configs": {"c": [
        {"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb+me": 1}}]}})
    (plan,) = resolve(parse_text(text, "c.json"), "c", [one_gpu("H100-80GB")])
    assert plan.layout.counts() == {"1g.10gb+me": 1}


def test_an_unknown_gpu_is_skipped_by_devices_all_and_refused_by_index():
    unknown = Target(1, "NVIDIA T4", None, ("0x1EB810DE",))
    spec = "version: v1\nmig-configs:\n  c:\n    - devices: {}\n      mig-enabled: true\n"
    plans = resolve(parse_text(spec.format("all"), "f.yaml"), "c", [one_gpu("A30"), unknown])
    assert plans[1].entry is None and "not a MIG GPU" in plans[1].note
    message = error_of(spec.format("[1]"), targets=[one_gpu("A30"), unknown])
    assert "gpu 1 (NVIDIA T4) is not a MIG GPU slurm-mig knows" in message


# ----------------------------------------------------------------------------- errors


def test_unknown_config_name_lists_the_names():
    message = error_of(usual_configs_yaml(), name="all-2g.99gb")
    assert message.startswith("config.yaml: no mig-parted config named 'all-2g.99gb'; it has: "
                              "all-disabled, all-enabled, ")
    names = USUAL_SPEC.names()
    assert len(names) > 30 and message.endswith(f"{names[29]}, ... ({len(names)} in all)")


def test_unknown_profile_names_config_gpu_and_profile():
    message = error_of("""\
        version: v1
        mig-configs:
          c:
            - devices: all
              mig-enabled: true
              mig-devices: {"1g.5gb": 7}
        """)
    assert message.startswith("config.yaml: mig-configs.c[0]: gpu 0 (NVIDIA A100-SXM4-80GB): "
                              "profile '1g.5gb' is not offered by NVIDIA A100-SXM4-80GB "
                              "(offered: 1g.10gb, ")


def test_too_many_instances_names_the_profile_and_the_limit():
    message = error_of("""\
        version: v1
        mig-configs:
          c:
            - devices: all
              mig-enabled: true
              mig-devices: {"1g.20gb": 5}
        """)
    assert message == ("config.yaml: mig-configs.c[0]: gpu 0 (NVIDIA A100-SXM4-80GB): profile "
                       "1g.20gb: 5 instances, but at most 4 fit on one GPU")


def test_counts_that_do_not_fit_together_name_the_profiles():
    message = error_of("""\
        version: v1
        mig-configs:
          c:
            - devices: all
              mig-enabled: true
              mig-devices: {"3g.40gb": 2, "1g.10gb": 1}
        """)
    assert message.startswith("config.yaml: mig-configs.c[0]: gpu 0 (NVIDIA A100-SXM4-80GB): "
                              "profiles 3g.40gb, 1g.10gb: 3g.40gb:2,1g.10gb:1 does not fit")


def test_a_second_media_extension_instance_is_refused():
    message = error_of("""\
        version: v1
        mig-configs:
          c:
            - devices: all
              mig-enabled: true
              mig-devices: {"1g.10gb+me": 2}
        """)
    assert "profile 1g.10gb+me: 2 instances, but at most 1 fit" in message


def test_a_compute_instance_profile_is_refused_with_the_full_size_name():
    message = error_of("""\
        version: v1
        mig-configs:
          c:
            - devices: all
              mig-enabled: true
              mig-devices: {"1c.3g.40gb": 3}
        """)
    assert message.endswith("slurm-mig makes one full-size compute instance per GPU instance: "
                            "write 3g.40gb")


@pytest.mark.parametrize("text, expected", [
    ("version: v2\nmig-configs: {}\n", "config.yaml: version 'v2' is not known; slurm-mig reads "
                                       "mig-parted's 'version: v1'"),
    ("mig-configs: {}\n", "config.yaml: no 'version'"),
    ("", "config.yaml: empty; "),
    ("- a\n", "config.yaml: expected a mapping with 'version: v1' and 'mig-configs', got list"),
    ("version: v1\nmig-configs: {}\n", "config.yaml: 'mig-configs' must map at least one"),
    ("version: v1\nmig-configs:\n  c: []\n", "config.yaml: mig-configs.c: expected a list of at "
                                              "least one entry"),
    ("version: v1\nconfigs: {}\n", "config.yaml: unexpected key 'configs'"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: all\n",
     "config.yaml: mig-configs.c[0]: missing 'mig-enabled' (mig-parted requires it)"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: some\n      mig-enabled: true\n",
     "config.yaml: mig-configs.c[0]: devices 'some': write 'all' or a list of GPU indexes"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: 1\n",
     "config.yaml: mig-configs.c[0]: mig-enabled 1 is not true or false"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: false\n"
     "      mig-devices: {1g.10gb: 1}\n",
     "config.yaml: mig-configs.c[0]: mig-devices given with mig-enabled: false"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n"
     "      mig-devices: {1g.10gb: 0}\n", "config.yaml: mig-configs.c[0]: every count in "
                                          "mig-devices is 0"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n"
     "      mig-devices: {1g.10gb: -1}\n", "config.yaml: mig-configs.c[0]: profile 1g.10gb: "
                                           "count -1 is not a whole number (0 to 64)"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n"
     "      mig-devices: {1g: 1}\n", "config.yaml: mig-configs.c[0]: profile '1g' is not a MIG "
                                     "profile name as mig-parted writes them"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n"
     "      device-filter: A100\n", "config.yaml: mig-configs.c[0]: device-filter 'A100' is not "
                                    "a PCI device id"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n"
     "      mig-devicez: {}\n", "config.yaml: mig-configs.c[0]: unexpected key 'mig-devicez'"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n"
     "  c:\n    - devices: all\n      mig-enabled: false\n",
     "config.yaml: not valid YAML: key 'c' given twice at line 6, column 3"),
    ("version: v1\nmig-configs:\n  c:\n    - devices: [0\n",
     "config.yaml: not valid YAML: "),
    ("version: v1\n\tmig-configs: {}\n", "config.yaml: not valid YAML: "),
    ("version: v1\nmig-configs: " + "[" * 1000 + "]" * 1000 + "\n",
     "config.yaml: nested too deeply to be a mig-parted config"),
    ("version: v1\nmig-configs: !!python/object/apply:os.system [true]\n",
     "config.yaml: not valid YAML: "),
])
def test_bad_files_are_one_line_errors_with_exit_2(text, expected):
    with pytest.raises(InputError) as info:
        parse_text(text, "config.yaml")
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == EXIT_USAGE
    assert message.startswith(expected), message


def test_malformed_yaml_says_what_and_where():
    with pytest.raises(InputError) as info:
        parse_text("version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled true\n",
                   "config.yaml")
    assert str(info.value) == ("config.yaml: not valid YAML: could not find expected ':' at "
                               "line 6, column 1; fix the file (mig-parted's examples/config.yaml "
                               "shows the format)")


def test_a_config_that_covers_no_gpu_says_so():
    message = error_of(usual_configs_yaml(), name="all-1g.6gb")
    assert message.startswith("config.yaml: mig-configs.all-1g.6gb covers none of these GPUs "
                              "(gpu 0 NVIDIA A100-SXM4-80GB (0x20B210DE, ")


def test_a_subsystem_filter_that_matches_is_refused_rather_than_guessed():
    message = error_of("""\
        version: v1
        mig-configs:
          c:
            - device-filter: "0x20B210DE:0x147F10DE"
              devices: all
              mig-enabled: true
        """)
    assert "device-filter 0x20B210DE:0x147F10DE names a board by its subsystem id" in message
    assert message.endswith("write the device id alone (0x20B210DE) or list the GPUs in devices")


def test_missing_pyyaml_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(InputError) as info:
        parse_text("version: v1\n", "config.yaml")
    assert "needs PyYAML" in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- export


def state(index, key, counts=None, mig=True):
    model = CATALOG.model(key)
    return GpuState(index, model.name, model.pci_device_ids[0], mig,
                    tuple(sorted((counts or {}).items())))


def test_identical_gpus_export_as_one_entry_for_all_devices():
    gpus = [state(i, "H100-80GB", {"1g.10gb": 7}) for i in range(4)]
    assert spec_dict("current", export_entries(gpus)) == {"version": "v1", "mig-configs": {
        "current": [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 7}}]}}


def test_one_kind_with_two_layouts_exports_device_lists_without_filters():
    gpus = [state(0, "A30", {"4g.24gb": 1}), state(1, "A30"), state(2, "A30", {"4g.24gb": 1}),
            state(3, "A30", mig=False)]
    assert [e.as_dict() for e in export_entries(gpus)] == [
        {"devices": [0, 2], "mig-enabled": True, "mig-devices": {"4g.24gb": 1}},
        {"devices": [1], "mig-enabled": True, "mig-devices": {}},
        {"devices": [3], "mig-enabled": False}]


def test_mixed_models_export_device_filters_and_all_where_a_filter_holds_them_all():
    gpus = [state(0, "A100-80GB", {"7g.80gb": 1}), state(1, "A100-80GB", {"7g.80gb": 1}),
            state(2, "A30", {"1g.6gb": 4}), state(3, "A30", {"1g.6gb": 4}),
            state(4, "H100-80GB", {"7g.80gb": 1}), state(5, "A30", {"4g.24gb": 1})]
    assert [e.as_dict() for e in export_entries(gpus)] == [
        {"device-filter": ["0x20B210DE", "0x233010DE"], "devices": "all",
         "mig-enabled": True, "mig-devices": {"7g.80gb": 1}},
        {"device-filter": "0x20B710DE", "devices": [2, 3], "mig-enabled": True,
         "mig-devices": {"1g.6gb": 4}},
        {"device-filter": "0x20B710DE", "devices": [5], "mig-enabled": True,
         "mig-devices": {"4g.24gb": 1}}]


def test_rendered_yaml_reads_back_as_the_same_config_and_is_what_json_says():
    import yaml

    gpus = [state(0, "A100-80GB", {"1g.10gb+me": 1, "3g.40gb": 2}), state(1, "A30", mig=False),
            state(2, "A30")]
    entries = export_entries(gpus)
    for name in ("current", "yes", "1.5", "all-balanced"):
        text = render_yaml(name, entries, {0: "gpu 0: NVIDIA A100-SXM4-80GB"}, ["a warning"])
        assert yaml.safe_load(text) == spec_dict(name, entries)
        assert text.startswith("# a warning\nversion: v1\nmig-configs:\n")


# ----------------------------------------------------------------------------- round trip


#: One model of each shape (placement units, counts) sweeps every count; the others, whose
#: profiles differ from one of these by name and memory only, a sample naming every profile.
SWEPT = ("A100-40GB", "RTX-PRO-6000", "A30")


def _counts_to_try(model):
    """Each distinct set of counts the model allows (+me profiles included), or every 8th
    and the first with each profile."""
    counts = list(dict.fromkeys(tuple(sorted(layout.counts().items()))
                                for layout in enumerate_layouts(model)))
    if model.key in SWEPT:
        return counts
    firsts = [next(c for c in counts if p.name in dict(c)) for p in model.profiles]
    return list(dict.fromkeys(counts[::8] + firsts))


@pytest.mark.parametrize("key", MODELS)
def test_export_then_import_gives_the_same_layout_for_every_count_the_model_allows(key):
    model = CATALOG.model(key)
    tried = _counts_to_try(model)
    assert {p for counts in tried for p, _ in counts} == {p.name for p in model.profiles}
    for counts in tried:
        placed = resolve_counts(model, {model.profile(p).id: n for p, n in counts})
        exported = [GpuState(0, model.name, model.pci_device_ids[0], True,
                             tuple(sorted(placed.counts().items())))]
        text = render_yaml("current", export_entries(exported))
        (plan,) = resolve(parse_text(text, "current.yaml"), "current", [one_gpu(key)])
        assert plan.layout == placed, (key, counts)


@pytest.mark.parametrize("key", MODELS)
def test_export_then_import_keeps_a_gpu_exactly_as_it_is(key):
    """Any placement, not only slurm-mig's own: the GPU's instances are kept (every 97th
    valid layout, +me ones included)."""
    model = CATALOG.model(key)
    sample = enumerate_layouts(model)[::97] if len(enumerate_layouts(model)) > 500 \
        else enumerate_layouts(model)
    assert any("+me" in i.name for layout in sample for i in layout)
    for layout in sample:
        exported = [GpuState(0, model.name, model.pci_device_ids[0], True,
                             tuple(sorted(layout.counts().items())))]
        text = render_yaml("current", export_entries(exported))
        (plan,) = resolve(parse_text(text, "c.yaml"), "current",
                          [one_gpu(key, current=layout)])
        assert plan.layout == layout


# ----------------------------------------------------------------------------- the CLI


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_cli_import_json_keys_are_stable(cli, tmp_path):
    path = write(tmp_path, usual_configs_yaml())
    code, out, err = cli("mig-parted", "import", path, "all-balanced", "--model", "A30", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert sorted(data) == ["config", "config_toml", "file", "gpus", "source"]
    assert (data["config"], data["source"], data["file"]) == ("all-balanced", "model", path)
    assert data["gpus"] == [{
        "index": 0, "name": "NVIDIA A30", "model": "A30",
        "entry": data["gpus"][0]["entry"], "mig_enabled": True,
        "layout": "1g.6gb@0,1g.6gb@1,2g.12gb@2", "counts": "1g.6gb:2,2g.12gb:1", "note": ""}]
    assert data["config_toml"] == ('[layout.gpus]\n0 = "1g.6gb:2,2g.12gb:1"\n'
                                   '[layout.mig_modes]\n0 = "on"\n')


def test_cli_import_text_shows_the_layout_and_the_config_lines(cli, tmp_path):
    path = write(tmp_path, usual_configs_yaml())
    code, out, _ = cli("mig-parted", "import", path, "all-3g.40gb", "--model", "H100-80GB")
    assert code == 0
    assert "0    H100-80GB  on   3g.40gb@0,3g.40gb@4" in out
    assert '  [layout.gpus]\n  0 = "3g.40gb:2"\n' in out


def test_cli_import_errors_are_one_line_and_exit_2(cli, tmp_path):
    path = write(tmp_path, usual_configs_yaml())
    code, out, err = cli("mig-parted", "import", path, "all-1g.5gb", "--model", "A100-80GB")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("slurm-mig: error: ") and "covers none" in err
    code, _, err = cli("mig-parted", "import", str(tmp_path / "nope.yaml"), "c", "--model", "A30")
    assert code == 2 and "cannot read the mig-parted config" in err and err.count("\n") == 1
    code, _, err = cli("mig-parted", "import", str(tmp_path), "c", "--model", "A30")
    assert code == 2 and "not a regular file" in err


def test_cli_export_json_is_mig_parteds_json_and_its_yaml(cli, node_config):
    config = node_config(gpus=("A100-80GB", "A100-80GB"))
    assert cli("apply", "1g.10gb:7", config=config)[0] == 0
    code, out, err = cli("--json", "mig-parted", "export", "--name", "site", config=config)
    assert code == 0, err
    data = json.loads(out)
    assert sorted(data) == ["name", "spec", "warnings", "yaml"]
    assert data["spec"] == {"version": "v1", "mig-configs": {"site": [
        {"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 7}}]}}
    assert data["yaml"].startswith("version: v1\nmig-configs:\n  site:\n    # gpu 0, gpu 1: ")


def test_cli_export_refuses_a_name_yaml_or_mig_parted_would_mangle(cli, node_config):
    code, _, err = cli("mig-parted", "export", "--name", "a b", config=node_config())
    assert code == 2 and "--name 'a b': use letters, digits" in err


def test_node_round_trip_on_every_model(cli, node_config, tmp_path):
    """Every catalog model on one simulated node, each GPU cut differently (+me included,
    two GPUs alike, one with no instances): export, then import on the same node, gives
    every GPU's layout back as it is, and the config.toml lines ask for those counts."""
    keys = MODELS + ["A100-80GB"]
    config = node_config(gpus=keys)
    wanted = {}
    for index, key in enumerate(keys):
        model = CATALOG.model(key)
        choices = [l for l in enumerate_layouts(model) if len(l) > 1]
        if index == len(keys) - 1:
            layout = wanted[keys.index(key)]  # the same as the first A100-80GB
        elif index == 2:
            layout = parse_layout("empty", model)
        else:
            with_me = [l for l in choices if any("+me" in i.name for i in l)]
            layout = (with_me if index % 2 else choices)[index * 5 % len(with_me or choices)]
        wanted[index] = layout
        code, _, err = cli("apply", format_layout(layout), "--gpu", index, config=config)
        assert code == 0, err
    code, exported, err = cli("mig-parted", "export", config=config)
    assert code == 0, err
    path = write(tmp_path, exported, "exported.yaml")
    code, out, err = cli("--json", "mig-parted", "import", path, "current", config=config)
    assert code == 0, err
    gpus = json.loads(out)["gpus"]
    assert {g["index"]: g["layout"] for g in gpus} == {
        i: format_layout(l) for i, l in wanted.items()}
    code, out, _ = cli("--json", "status", config=config)
    assert [g["layout"] for g in json.loads(out)["gpus"]] == [g["layout"] for g in gpus]


# ----------------------------------------------------------------------------- fuzzing


FUZZ_VALUES = ["all", "[0, 1]", "[-1]", "[99999999999999999999]", "true", "false", "yes", "1",
               "-3", "1.5", "null", "{}", "[]", '"1g.10gb"', "{1g.10gb: 7}", "{1g.10gb: 1e9}",
               '{"1c.3g.40gb": 1}', "{3g.40gb: 2, 1g.10gb+me: 1}", '"0x20B210DE"',
               '["0x20B210DE:0x147F10DE"]', '"0xZZ"', "&a [*a]", "!!python/object:os.system x",
               "2026-12-04", "[" * 50 + "]" * 50, "'\\x00'", '"é٣"', "*missing", "|\n  x"]


def _fuzzed(rng, lines):
    lines = list(lines)
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(len(lines))
        op = rng.random()
        if op < 0.5 and ":" in lines[i]:
            lines[i] = lines[i].split(":", 1)[0] + ": " + rng.choice(FUZZ_VALUES)
        elif op < 0.65:
            del lines[i]
        elif op < 0.8:
            lines[i] = lines[i][:rng.randrange(len(lines[i]) + 1)]
        elif op < 0.9:
            lines.insert(i, lines[rng.randrange(len(lines))])
        else:
            lines.insert(i, rng.choice(["version: v1", "  x:", "    - devices: all",
                                        "      mig-enabled: true", "\t", "---", "\x00", "? [a]"]))
    return "\n".join(lines) + "\n"


def test_fuzzed_configs_give_a_plan_or_one_line_exit_2_never_a_crash():
    """Seeded (the same 200 cases each run): a mutated config either resolves, for every GPU
    of a mixed node, to layouts valid on each GPU, or is refused with one line (exit 2)."""
    import random

    lines = usual_configs_yaml().splitlines()[:9] + [
        "  custom:", "    - devices: [0]", "      mig-enabled: true",
        '      mig-devices: {"1g.10gb": 2, "3g.40gb": 1}', "    - device-filter: \"0x20B710DE\"",
        "      devices: all", "      mig-enabled: false"]
    targets = [one_gpu("A100-80GB", 0), one_gpu("A30", 1), one_gpu("A100-40GB", 2)]
    rng = random.Random(13_013)
    outcomes = {"resolved": 0, "refused": 0}
    for case in range(200):
        text = _fuzzed(rng, lines)
        for name in ("all-enabled", "custom"):
            try:
                for plan in resolve(parse_text(text, "f.yaml"), name, targets):
                    if plan.layout is not None:
                        check_layout(CATALOG.model(plan.model), plan.layout)
                outcomes["resolved"] += 1
            except InputError as err:
                assert "\n" not in str(err) and err.exit_code == EXIT_USAGE, f"case {case}"
                outcomes["refused"] += 1
    assert min(outcomes.values()) > 20, outcomes  # both paths taken


def test_imported_counts_fed_to_apply_give_the_printed_layouts(cli, node_config, tmp_path):
    """What docs/mig-parted.md tells an admin to do: `slurm-mig apply COUNTS --gpu N` with
    import's counts cuts each GPU as import printed, and the config.toml lines it prints
    are read by slurm-mig's config as those layouts and MIG modes."""
    from slurm_mig.host.config import load_config

    config = node_config(gpus=("A100-80GB", "H100-80GB", "A30"))
    assert cli("apply", "1g.10gb:3", "--gpu", 0, config=config)[0] == 0  # kept where it fits
    path = write(tmp_path, usual_configs_yaml())
    code, out, err = cli("--json", "mig-parted", "import", path, "all-balanced", config=config)
    assert code == 0, err
    result = json.loads(out)
    for g in result["gpus"]:
        assert cli("apply", g["counts"], "--gpu", g["index"], config=config)[0] == 0
    status = json.loads(cli("--json", "status", config=config)[1])
    assert [g["layout"] for g in status["gpus"]] == [g["layout"] for g in result["gpus"]]
    with_lines = node_config(gpus=("A100-80GB", "H100-80GB", "A30"), extra=result["config_toml"])
    loaded = load_config(with_lines)
    assert [loaded.layout_for(g["index"]) for g in result["gpus"]] == [
        g["counts"] for g in result["gpus"]]
    assert [loaded.layout.mig_mode_for(g["index"]) for g in result["gpus"]] == [True] * 3


def test_a_node_with_mig_off_exports_and_imports_as_mig_off(cli, node_config, tmp_path):
    config = node_config(gpus=("H100-80GB", "H100-80GB"))
    assert cli("sim", "init", "--mig-off", config=config)[0] == 0
    code, exported, err = cli("mig-parted", "export", config=config)
    assert code == 0, err
    assert exported.endswith("  current:\n    # gpu 0, gpu 1: NVIDIA H100 80GB HBM3\n"
                             "    - devices: all\n      mig-enabled: false\n")
    path = write(tmp_path, exported, "off.yaml")
    code, out, err = cli("--json", "mig-parted", "import", path, "current", config=config)
    assert code == 0, err
    result = json.loads(out)
    assert [(g["mig_enabled"], g["layout"], g["model"]) for g in result["gpus"]] == [
        (False, None, "H100-80GB")] * 2
    assert result["config_toml"] == '[layout.mig_modes]\n0 = "off"\n1 = "off"\n'


def test_an_earlier_entry_that_covers_a_gpu_must_be_possible_too():
    """mig-parted applies every covering entry in turn, so it fails on an impossible one
    even when a later entry would win."""
    message = error_of("""\
        version: v1
        mig-configs:
          c:
            - devices: all
              mig-enabled: true
              mig-devices: {"1g.5gb": 7}
            - devices: all
              mig-enabled: true
              mig-devices: {"1g.10gb": 7}
        """)
    assert message.startswith("config.yaml: mig-configs.c[0]: gpu 0 (NVIDIA A100-SXM4-80GB): "
                              "profile '1g.5gb' is not offered")


def test_a_gpu_whose_mig_mode_must_change_says_which_mode_command(cli, node_config, tmp_path):
    config = node_config(gpus=("A30",))
    assert cli("sim", "init", "--mig-off", config=config)[0] == 0
    path = write(tmp_path, usual_configs_yaml())
    code, out, err = cli("mig-parted", "import", path, "all-balanced", config=config)
    assert code == 0, err
    assert "  gpu 0: MIG is off now: `slurm-mig mode on --gpu 0` first (docs/mig-mode.md)" in out
    assert "0    A30    on   1g.6gb@0,1g.6gb@1,2g.12gb@2" in out
