"""Layouts: parsing both text forms, validation messages, enumeration, the count form."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slurm_mig.core.catalog import ObservedProfile, load_catalog, observed_model
from slurm_mig.core.errors import EXIT_USAGE, InputError, LayoutError
from slurm_mig.core.layout import (Instance, Layout, addable, check_layout, enumerate_layouts,
                                   format_counts, format_layout, is_maximal, is_media_extension,
                                   is_valid, layout_from, maximal_layouts, parse_layout)

CATALOG = load_catalog()
A100 = CATALOG.model("A100-40GB")
A100_80 = CATALOG.model("A100-80GB")
RTX = CATALOG.model("RTX-PRO-6000")
A30 = CATALOG.model("A30")


def layout_error(text, model=A100) -> str:
    """Parse ``text``, expect a LayoutError, return its one-line message."""
    with pytest.raises(LayoutError) as info:
        parse_layout(text, model)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == EXIT_USAGE
    return message


# ----------------------------------------------------------------------------- parsing


def test_canonical_form_parses_to_instances():
    layout = parse_layout("3g.20gb@0,2g.10gb@4,1g.5gb@6", A100)
    assert [(i.name, i.start, i.size) for i in layout] == [
        ("3g.20gb", 0, 4), ("2g.10gb", 4, 2), ("1g.5gb", 6, 1)
    ]
    assert [i.profile_id for i in layout] == [9, 14, 19]


def test_canonical_text_round_trips():
    for text in ("3g.20gb@0,2g.10gb@4,1g.5gb@6", "7g.40gb@0", "empty", "1g.10gb@0,1g.10gb@2"):
        assert format_layout(parse_layout(text, A100)) == text


def test_instances_are_ordered_by_start_whatever_the_input_order():
    layout = parse_layout("1g.5gb@6,3g.20gb@0,2g.10gb@4", A100)
    assert str(layout) == "3g.20gb@0,2g.10gb@4,1g.5gb@6"
    assert layout == parse_layout("2g.10gb@4,1g.5gb@6,3g.20gb@0", A100)


def test_spaces_case_and_mig_prefix_are_accepted():
    layout = parse_layout(" 3G.20GB @ 0 , MIG 1g.5gb@6 ", A100)
    assert str(layout) == "3g.20gb@0,1g.5gb@6"


@pytest.mark.parametrize("text", ["empty", "EMPTY", "none"])
def test_empty_words_mean_no_instances(text):
    assert parse_layout(text, A100) == Layout()
    assert format_layout(parse_layout(text, A100)) == "empty"


@pytest.mark.parametrize("text", ["", "  "])
def test_blank_layout_text_is_refused_so_an_unset_variable_cannot_wipe_a_gpu(text):
    with pytest.raises(LayoutError, match="write 'empty' to remove every instance"):
        parse_layout(text, A100)


def test_count_form_keeps_what_the_gpu_already_has():
    current = parse_layout("1g.5gb@0,3g.20gb@4", A100)
    assert parse_layout("1g.5gb:1", A100, current=current) == parse_layout("1g.5gb@0", A100)
    assert parse_layout("1g.5gb:1,3g.20gb:1", A100, current=current) == current
    # without the current layout the same text is placed for the most room
    assert parse_layout("1g.5gb:1", A100) != parse_layout("1g.5gb@0", A100)


def test_count_form_keeps_busy_instances_before_idle_ones():
    current = parse_layout("1g.5gb@0,1g.5gb@1", A100)
    busy = [i for i in current if i.start == 1]
    assert parse_layout("1g.5gb:1", A100, current=current, busy=busy) == parse_layout("1g.5gb@1", A100)


def test_count_form_places_instances():
    layout = parse_layout("1g.5gb:2,3g.20gb:1", A100)
    assert layout.counts() == {"1g.5gb": 2, "3g.20gb": 1}
    assert is_valid(A100, layout)


def test_count_form_sums_repeated_profiles():
    assert parse_layout("1g.5gb:1,1g.5gb:1", A100) == parse_layout("1g.5gb:2", A100)


def test_count_form_with_zero_count_is_empty():
    assert parse_layout("1g.5gb:0", A100) == Layout()


def test_count_form_ignores_item_order():
    assert parse_layout("3g.20gb:1,1g.5gb:2", A100) == parse_layout("1g.5gb:2,3g.20gb:1", A100)


def test_count_form_is_deterministic():
    texts = {str(parse_layout("1g.5gb:3,2g.10gb:1", A100)) for _ in range(5)}
    enumerate_layouts.cache_clear()
    texts.add(str(parse_layout("1g.5gb:3,2g.10gb:1", A100)))
    assert len(texts) == 1


def test_count_form_keeps_room_for_the_big_profile():
    layout = parse_layout("1g.5gb:2", A100)
    assert all(i.start >= 4 for i in layout)  # packed into the top half
    assert Instance.of(A100.profile("4g.20gb"), 0) in addable(A100, layout)


def test_count_form_on_a30_keeps_a_2g_free():
    layout = parse_layout("1g.6gb:2", A30)
    assert any(i.name == "2g.12gb" for i in addable(A30, layout))


def largest_addable(model, layout) -> int:
    return max((i.compute_slices for i in addable(model, layout, include_me=False)), default=0)


@pytest.mark.parametrize("model", [A100, RTX, A30], ids=lambda m: m.key)
def test_count_form_leaves_as_much_room_as_any_placement(model):
    """For every count vector, no other placement of the same counts admits a bigger profile."""
    by_counts = {}
    for layout in enumerate_layouts(model, include_me=False):
        by_counts.setdefault(format_counts(layout), []).append(layout)
    for counts, layouts in by_counts.items():
        if counts == "empty":
            continue
        resolved = parse_layout(counts, model)
        assert format_counts(resolved) == counts
        assert largest_addable(model, resolved) == max(largest_addable(model, l) for l in layouts), counts


def test_count_form_that_does_not_fit_says_where_to_look():
    message = layout_error("4g.20gb:1,3g.20gb:2")
    assert "does not fit" in message and "slurm-mig layouts A100-40GB" in message


def test_format_counts():
    assert format_counts(parse_layout("3g.20gb@0,1g.5gb@5,1g.5gb@6", A100)) == "1g.5gb:2,3g.20gb:1"
    assert format_counts(Layout()) == "empty"


# ----------------------------------------------------------------------------- malformed text


@pytest.mark.parametrize(
    "text, names, fix",
    [
        ("3g.20gb@0,,1g.5gb@6", "3g.20gb@0,,1g.5gb@6", "write e.g."),
        ("3g.20gb@0,1g.5gb:2", "3g.20gb@0,1g.5gb:2", "use one form"),
        ("3g.20gb@0,1g.5gb", "3g.20gb@0,1g.5gb", "PROFILE@START"),
        ("3g.20gb", "'3g.20gb'", "PROFILE:COUNT"),
        ("1g.5gb@x", "'1g.5gb@x'", "not a whole number (0 to 64); write e.g. 3g.40gb@0"),
        ("1g.5gb@-1", "'1g.5gb@-1'", "not a whole number (0 to 64)"),
        ("1g.5gb:two", "'1g.5gb:two'", "not a whole number (0 to 64); write e.g. 1g.10gb:2"),
        ("1g.5gb:-2", "'1g.5gb:-2'", "not a whole number (0 to 64)"),
    ],
)
def test_malformed_text_names_the_item_and_the_fix(text, names, fix):
    message = layout_error(text)
    assert names in message
    assert fix in message


def test_unknown_profile_lists_the_offered_ones():
    message = layout_error("9g.99gb@0")
    assert "'9g.99gb'" in message
    assert "offered: 1g.5gb, 1g.5gb+me, 1g.10gb, 2g.10gb, 3g.20gb, 4g.20gb, 7g.40gb" in message


def test_unknown_profile_in_count_form_lists_the_offered_ones():
    assert "offered:" in layout_error("1g.10gb:1", A30)


def test_layout_errors_are_input_errors():
    with pytest.raises(InputError):
        parse_layout("nonsense", A100)


# ----------------------------------------------------------------------------- validity


def test_start_that_is_not_a_placement_lists_the_placements():
    message = layout_error("3g.20gb@2")
    assert "3g.20gb@2" in message and "(placements: 0, 4)" in message


def test_overlap_names_both_instances_and_their_units():
    message = layout_error("2g.10gb@0,1g.5gb@1")
    assert "2g.10gb@0 and 1g.5gb@1 overlap" in message
    assert "units 0-1 and 1-1" in message
    assert "slurm-mig layouts A100-40GB" in message


def test_overlap_of_the_full_gpu_with_anything():
    assert "overlap" in layout_error("7g.40gb@0,1g.5gb@6")


def test_too_many_of_one_profile_names_the_maximum():
    message = layout_error("1g.24gb+me@0,1g.24gb+me@3", RTX)
    assert "1g.24gb+me" in message and "at most 1" in message


def test_two_media_extension_instances_are_refused():
    message = layout_error("1g.24gb+me@0,1g.24gb+me.all@3", RTX)
    assert "media engines" in message and "at most one +me" in message


def test_compute_slices_beyond_the_gpu_are_refused():
    small = replace(A100, compute_slices=3)
    with pytest.raises(LayoutError) as info:
        check_layout(small, parse_layout("3g.20gb@0,1g.5gb@4", A100))
    assert "needs 4 compute slices" in str(info.value) and "has 3" in str(info.value)


def test_layout_from_pairs_validates():
    assert str(layout_from(A100, [(19, 6), (9, 0)])) == "3g.20gb@0,1g.5gb@6"
    with pytest.raises(LayoutError):
        layout_from(A100, [(9, 0), (14, 2)])


def test_unknown_profile_id_is_a_layout_error():
    with pytest.raises(LayoutError) as info:
        check_layout(A100, [Instance(99, 0, "x", 1)])
    assert "profile id 99" in str(info.value)


# ----------------------------------------------------------------------------- aliases and ids


def test_alias_parses_to_the_canonical_profile():
    assert str(parse_layout("3g.39gb@0", A100_80)) == "3g.40gb@0"
    assert parse_layout("3g.39gb@0,3g.40gb@4", A100_80) == parse_layout("3g.40gb@0,3g.40gb@4", A100_80)
    assert str(parse_layout("3g.19gb:1", A100)) == str(parse_layout("3g.20gb:1", A100))


def test_nvml_profile_id_wins_over_the_name():
    """A driver that calls profile 9 '3g.39gb': both names reach id 9; the driver's name is shown."""
    observed = []
    for p in A100_80.profiles:
        name = "3g.39gb" if p.id == 9 else p.name
        observed.append(ObservedProfile(p.id, name, p.compute_slices, p.max_count, p.memory_mib or 0,
                                        p.placements, p.placement_size))
    live = observed_model(A100_80.name, observed, A100_80)
    assert live.profile("3g.40gb").id == live.profile("3g.39gb").id == 9
    on_driver = parse_layout("3g.40gb@0,1g.10gb@4", live)
    assert str(on_driver) == "3g.39gb@0,1g.10gb@4"
    assert on_driver == parse_layout("3g.40gb@0,1g.10gb@4", A100_80)  # equal on (id, start)


def test_instances_compare_on_profile_id_and_start_only():
    assert Instance(9, 0, "3g.40gb", 4) == Instance(9, 0, "3g.39gb", 4)
    assert Instance(9, 0, "3g.40gb", 4) != Instance(9, 4, "3g.40gb", 4)


# ----------------------------------------------------------------------------- enumeration


def brute_force_layouts(model, include_me=False):
    """Every valid layout as a bitmask over the (profile, placement) candidates, by brute force.

    Independent of :func:`enumerate_layouts`: it walks all 2**n subsets in mask order,
    extending the subset without its lowest candidate by that candidate, and checks
    validity with unit-occupancy bitmasks, per-profile counts and the compute sum.
    """
    cands = [
        (p, s) for p in model.profiles if include_me or "+me" not in p.name for s in p.placements
    ]
    n = len(cands)
    unit_mask = [((1 << p.placement_size) - 1) << s for p, s in cands]
    profiles = sorted({p.id for p, _ in cands})
    counter_bit = {pid: 4 * i for i, pid in enumerate(profiles)}  # 4 bits of count per profile
    size = 1 << n
    units = [0] * size
    compute = [0] * size
    counts = [0] * size
    media = [0] * size
    valid = bytearray(size)
    valid[0] = 1
    for mask in range(1, size):
        low = (mask & -mask).bit_length() - 1
        rest = mask & (mask - 1)
        if not valid[rest]:
            continue
        p, _ = cands[low]
        if units[rest] & unit_mask[low] or compute[rest] + p.compute_slices > model.compute_slices:
            continue
        shift = counter_bit[p.id]
        if ((counts[rest] >> shift) & 0xF) + 1 > p.max_count:
            continue
        me = 1 if "+me" in p.name else 0
        if media[rest] and me:
            continue
        valid[mask] = 1
        units[mask] = units[rest] | unit_mask[low]
        compute[mask] = compute[rest] + p.compute_slices
        counts[mask] = counts[rest] + (1 << shift)
        media[mask] = media[rest] | me
    layouts = [mask for mask in range(size) if valid[mask]]
    maximal = [m for m in layouts if not any(valid[m | (1 << b)] for b in range(n) if not m >> b & 1)]

    def keys(mask):
        return frozenset((cands[b][0].id, cands[b][1]) for b in range(n) if mask >> b & 1)

    return {keys(m) for m in layouts}, {keys(m) for m in maximal}


def test_maximal_a100_40gb_layouts_without_me_match_an_independent_count():
    everything, maximal = brute_force_layouts(A100)
    assert len(maximal_layouts(A100, include_me=False)) == len(maximal)
    assert {l.keys() for l in maximal_layouts(A100, include_me=False)} == maximal
    assert {l.keys() for l in enumerate_layouts(A100, include_me=False)} == everything


@pytest.mark.parametrize("model", [A30, RTX], ids=lambda m: m.key)
def test_layouts_of_other_axes_match_an_independent_count(model):
    everything, maximal = brute_force_layouts(model)
    assert {l.keys() for l in enumerate_layouts(model, include_me=False)} == everything
    assert {l.keys() for l in maximal_layouts(model, include_me=False)} == maximal


def test_a30_layouts_with_me_match_an_independent_count():
    everything, _ = brute_force_layouts(A30, include_me=True)
    assert {l.keys() for l in enumerate_layouts(A30)} == everything


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_enumerated_layouts_are_valid_unique_and_canonical(model):
    layouts = enumerate_layouts(model)
    texts = [format_layout(l) for l in layouts]
    assert texts == sorted(texts)
    assert len(set(texts)) == len(texts)
    assert Layout() in layouts
    for layout in layouts:
        assert check_layout(model, layout.instances) == layout
        assert parse_layout(format_layout(layout), model) == layout


@pytest.mark.parametrize("model", CATALOG.models, ids=lambda m: m.key)
def test_without_me_drops_exactly_the_media_extension_layouts(model):
    with_me = set(enumerate_layouts(model))
    without = set(enumerate_layouts(model, include_me=False))
    assert without <= with_me
    for layout in with_me - without:
        assert any(is_media_extension(model.profile(i.profile_id)) for i in layout)


def test_the_full_gpu_is_maximal_and_alone():
    full = parse_layout("7g.40gb@0", A100)
    assert is_maximal(A100, full)
    assert not is_maximal(A100, parse_layout("3g.20gb@0", A100))


# ----------------------------------------------------------------------------- model specifics


def test_rtx_pro_6000_uses_a_twelve_unit_axis():
    assert RTX.placement_units == 12
    layout = parse_layout("1g.24gb:4", RTX)
    assert str(layout) == "1g.24gb@0,1g.24gb@3,1g.24gb@6,1g.24gb@9"
    assert [i.end for i in layout] == [3, 6, 9, 12]
    assert "(placements: 0, 3, 6, 9)" in layout_error("1g.24gb@1", RTX)
    assert "overlap" in layout_error("2g.48gb@0,1g.24gb@3", RTX)


def test_rtx_pro_6000_mixes_graphics_and_no_me_profiles():
    layout = parse_layout("2g.48gb+gfx@0,1g.24gb-me@6,1g.24gb+me@9", RTX)
    assert str(layout) == "2g.48gb+gfx@0,1g.24gb-me@6,1g.24gb+me@9"
    assert is_maximal(RTX, layout)
    assert not is_media_extension(RTX.profile("1g.24gb-me"))
    assert str(parse_layout("4g.96gb+gfx@0", RTX)) == "4g.96gb+gfx@0"


def test_a30_uses_a_four_unit_axis():
    assert A30.placement_units == 4
    assert str(parse_layout("2g.12gb+me@0,2g.12gb@2", A30)) == "2g.12gb+me@0,2g.12gb@2"
    assert "media engines" in layout_error("1g.6gb+me@0,2g.12gb+me@2", A30)
    assert "(placements: 0, 2)" in layout_error("2g.12gb@1", A30)
    assert str(parse_layout("1g.6gb:4", A30)) == "1g.6gb@0,1g.6gb@1,1g.6gb@2,1g.6gb@3"
    assert "does not fit" in layout_error("4g.24gb:1,1g.6gb:1", A30)
