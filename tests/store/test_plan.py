"""aufs.plan: mount planning as pure functions (no disk, no kernel)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aufs.backends.aufs import branch_mount_data
from aufs.plan import (
    Mount,
    escape_option,
    fit_lowers,
    legacy_overlay_max_depth,
    mount_chain,
    mount_data,
    overlay_mount,
    parse_overlay_options,
    split_option_list,
    unescape_option,
)

paths = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1)


@given(paths)
def test_escape_round_trips(path: str) -> None:
    escaped = escape_option(path)
    assert unescape_option(escaped) == path
    assert split_option_list(escaped) == [path]
    # no unescaped separator survives: the kernel's parser cannot split inside a path
    assert len(split_option_list(escaped, ",")) == 1


@given(st.lists(paths, min_size=1, max_size=6), paths, paths)
def test_overlay_options_parse_back(lowers: list[str], upper: str, work: str) -> None:
    m = overlay_mount(lowers, upper, work, ("index=off",))
    assert m.type == "overlay" and m.source == "overlay"
    assert parse_overlay_options(m.options) == (lowers, upper, work, ["index=off"])
    ro = overlay_mount(lowers)
    assert parse_overlay_options(ro.options)[1:3] == (None, None)


def test_mount_chain_stops_at_an_opaque_root() -> None:
    ancestors = ["p", "q", "r", "s"]
    never = lambda layer_id: False  # noqa: E731
    assert mount_chain("top", ancestors, never) == ancestors
    assert mount_chain("top", ancestors, never, include_self=True) == ["top", *ancestors]
    at_q = lambda layer_id: layer_id == "q"  # noqa: E731
    assert mount_chain("top", ancestors, at_q) == ["p", "q"]
    top_opaque = lambda layer_id: layer_id == "top"  # noqa: E731
    assert mount_chain("top", ancestors, top_opaque) == []
    assert mount_chain("top", ancestors, top_opaque, include_self=True) == ["top"]


def test_fit_lowers_prefers_full_paths_then_short_links() -> None:
    full = [f"/very/long/store/home/layers/{i:0>64}/diff" for i in range(10)]
    short = [f"/h/l/{i:0>20}" for i in range(10)]
    calls: list[int] = []

    def make_short() -> list[str]:
        calls.append(1)
        return short

    render = lambda lowers: overlay_mount(lowers, "/u", "/w")  # noqa: E731
    assert fit_lowers(full, make_short, render, 4096) == full and not calls  # no links made
    assert fit_lowers(full, make_short, render, 512) == short  # full would not fit
    assert fit_lowers(full, make_short, render, 64) == short  # nothing fits: still the shortest
    assert len(mount_data(render(short).options)) < 512


def test_legacy_depth_fills_one_page() -> None:
    depth = legacy_overlay_max_depth(4096, 40, 100)
    used = len("lowerdir=,upperdir=,workdir=") + 200 + sum(len(o) + 1 for o in ("index=off", "redirect_dir=off", "metacopy=off"))
    assert used + (depth - 1) * 41 <= 4095 < used + depth * 41
    assert legacy_overlay_max_depth(1 << 20, 40, 100) == 501


def test_aufs_description_matches_the_branch_data() -> None:
    """The aufs backend describes exactly what branch_mount_data builds (one Mount per mount(2))."""
    from aufs.backends.aufs import AufsBackend
    from aufs.layout import Layout
    from aufs.whiteouts import WhiteoutFormat

    lowers = [f"/store/layers/{i:0>100}/diff" for i in range(80)]
    backend = AufsBackend(Layout("/store"), WhiteoutFormat.AUFS)
    described = backend.describe(lowers, "/store/layers/top/diff", None)
    first, appends = branch_mount_data("/store/layers/top/diff", lowers, page_size=4096)
    assert described[0] == Mount("aufs", "none", tuple(first.split(",")))
    assert [mount_data(m.options) for m in described[1:]] == ["remount," + a for a in appends]
    ro = backend.describe(lowers[:3], None, None)
    assert ro[0].options[0] == "ro" and len(ro) == 1
