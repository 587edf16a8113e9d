"""``compute_changes`` and ``diff_size`` on real layer directories and real overlay views."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pathlib
import posixpath
import stat
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aufs.changes import Change, ChangeKind, compute_changes, diff_size
from aufs.whiteouts import WhiteoutFormat, make_opaque, make_whiteout

A, C, D = ChangeKind.ADD, ChangeKind.MODIFY, ChangeKind.DELETE
FORMATS = list(WhiteoutFormat)
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@contextlib.contextmanager
def overlay(target: pathlib.Path, lowers: Sequence[pathlib.Path], upper: pathlib.Path | None = None,
            work: pathlib.Path | None = None, fuse: bool = False) -> Iterator[pathlib.Path]:
    """A kernel overlay (or fuse-overlayfs) mount of ``lowers`` (top first) at ``target``."""
    target.mkdir(exist_ok=True)
    lowers = list(lowers)
    if upper is None and len(lowers) < 2:  # a read-only overlay wants two lowers
        spare = target.parent / (target.name + ".empty")
        spare.mkdir(exist_ok=True)
        lowers.append(spare)
    data = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None:
        assert work is not None
        data += f",upperdir={upper},workdir={work}"
    if fuse:
        import subprocess

        subprocess.run(["fuse-overlayfs", "-o", data, str(target)], check=True, capture_output=True)
    elif _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))
    try:
        yield target
    finally:
        if _libc.umount2(os.fsencode(target), 0) != 0:
            _libc.umount2(os.fsencode(target), 2)


def _dirfd(path: pathlib.Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def whiteout(parent: pathlib.Path, name: str, fmt: WhiteoutFormat) -> None:
    fd = _dirfd(parent)
    try:
        make_whiteout(fd, name, fmt)
    finally:
        os.close(fd)


def opaque(directory: pathlib.Path, fmt: WhiteoutFormat) -> None:
    fd = _dirfd(directory)
    try:
        make_opaque(fd, fmt)
    finally:
        os.close(fd)


def kinds(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.path, str(c.kind)) for c in changes]


def test_change_and_kind_values() -> None:
    assert (int(C), int(A), int(D)) == (0, 1, 2)  # Docker's ChangeType values
    change = Change("/etc/passwd", C)
    assert change.path == "/etc/passwd" and change.kind is C
    assert str(change) == "C /etc/passwd"
    with pytest.raises(AttributeError):
        change.path = "/x"  # type: ignore[misc]


# --- Docker's graph-driver Changes scenario -------------------------------------------------

def _docker_changes_scenario(ramdir: pathlib.Path, fuse: bool) -> tuple[list[Change], list[Change]]:
    """DriverTestChanges: 20 files in the base; the upper updates, adds and removes files."""
    base, upper, work = ramdir / "base", ramdir / "upper", ramdir / "work"
    for d in (base, upper, work):
        d.mkdir()
    (base / "directory-0").mkdir()
    for i in range(20):
        (base / "directory-0" / f"file-{i}").write_bytes(os.urandom(64))
    expected = [Change("/directory-0", C)]
    with overlay(ramdir / "merged", [base], upper, work, fuse=fuse) as root:
        for j in range(20):
            if j % 3 == 0:
                (root / "directory-0" / f"file-{j}").write_bytes(os.urandom(64))
                expected.append(Change(f"/directory-0/file-{j}", C))
            elif j % 3 == 1:
                (root / "directory-0" / f"file-6-{j}").write_bytes(os.urandom(64))
                expected.append(Change(f"/directory-0/file-6-{j}", A))
            else:
                os.remove(root / "directory-0" / f"file-{j}")
                expected.append(Change(f"/directory-0/file-{j}", D))
    fmt = WhiteoutFormat.AUFS if fuse else WhiteoutFormat.OVERLAY
    with overlay(ramdir / "view", [base]) as view:
        got = compute_changes(upper, view, fmt)
    assert compute_changes(upper, base, fmt) == got  # a plain parent dir is a view too
    return got, sorted(expected)


def test_docker_changes_scenario_overlay(ramdir: pathlib.Path) -> None:
    got, expected = _docker_changes_scenario(ramdir, fuse=False)
    assert len(got) == 21
    assert got == expected


def test_docker_changes_scenario_fuse_overlayfs(ramdir: pathlib.Path) -> None:
    got, expected = _docker_changes_scenario(ramdir, fuse=True)
    assert got == expected


# --- the rules, one by one ------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_base_layer_is_all_adds(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    layer = ramdir / "layer"
    (layer / "a" / "b").mkdir(parents=True)
    (layer / "a" / "b" / "f").write_bytes(b"x")
    (layer / "a-b").write_bytes(b"")
    os.symlink("nowhere", layer / "link")
    whiteout(layer, "gone", fmt)
    got = compute_changes(layer, None, fmt)
    # plain string order: "/a-b" sorts before "/a/b"
    assert kinds(got) == [
        ("/a", "A"), ("/a-b", "A"), ("/a/b", "A"), ("/a/b/f", "A"), ("/gone", "D"), ("/link", "A"),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_rules_against_a_lower(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    lower, layer = ramdir / "lower", ramdir / "layer"
    for d in ["same", "touched", "holder", "became-file", "opq", "opq/sub", "deep/er"]:
        (lower / d).mkdir(parents=True)
    (lower / "f").write_bytes(b"old")
    (lower / "file-became-dir").write_bytes(b"")
    (lower / "same" / "kept").write_bytes(b"")
    (lower / "holder" / "victim").write_bytes(b"")
    for name in ["h1", "h2", "keep"]:
        (lower / "opq" / name).write_bytes(b"")
    (lower / "deep" / "er" / "x").write_bytes(b"")
    t = 1_500_000_000
    for d in ["same", "touched", "holder", "opq", "deep", "deep/er"]:
        os.utime(lower / d, (t, t))
        os.chmod(lower / d, 0o755)

    for d in ["same", "touched", "holder", "opq", "file-became-dir/inner", "deep/er"]:
        (layer / d).mkdir(parents=True)
    (layer / "f").write_bytes(b"new")
    (layer / "new-file").write_bytes(b"")
    (layer / "same" / "kept").write_bytes(b"changed")  # MODIFY child only: dir not listed
    (layer / "file-became-dir" / "inner" / "x").write_bytes(b"")
    (layer / "became-file").write_bytes(b"")
    whiteout(layer / "holder", "victim", fmt)
    (layer / "opq" / "keep").write_bytes(b"again")
    opaque(layer / "opq", fmt)
    (layer / "deep" / "er" / "x").write_bytes(b"rewritten")
    for d in ["same", "holder", "opq", "deep", "deep/er"]:
        os.chmod(layer / d, 0o755)
        os.utime(layer / d, (t, t))
    os.utime(layer / "touched", (t + 1, t + 1))
    os.chmod(layer / "touched", 0o755)

    with overlay(ramdir / "view", [lower]) as view:
        got = kinds(compute_changes(layer, view, fmt))
    assert got == [
        ("/became-file", "C"),
        ("/deep/er/x", "C"),
        ("/f", "C"),
        ("/file-became-dir", "C"),
        ("/file-became-dir/inner", "A"),
        ("/file-became-dir/inner/x", "A"),
        ("/holder", "C"),          # rule 4: holds a DELETE
        ("/holder/victim", "D"),
        ("/new-file", "A"),
        ("/opq", "C"),             # rule 5
        ("/opq/h1", "D"),
        ("/opq/h2", "D"),
        ("/opq/keep", "C"),
        ("/opq/sub", "D"),
        ("/same/kept", "C"),       # rule 3: /same itself is not listed
        ("/touched", "C"),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_opaque_root_deletes_what_it_hides(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    lower, layer = ramdir / "lower", ramdir / "layer"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "f").write_bytes(b"")
    (lower / "kept").write_bytes(b"")
    (lower / "x").write_bytes(b"")
    layer.mkdir()
    (layer / "kept").write_bytes(b"")
    opaque(layer, fmt)
    with overlay(ramdir / "view", [lower]) as view:
        assert kinds(compute_changes(layer, view, fmt)) == [("/d", "D"), ("/kept", "C"), ("/x", "D")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_metadata_is_never_a_change(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    layer = ramdir / "layer"
    (layer / ".wh..wh.plnk").mkdir(parents=True)
    (layer / ".wh..wh.plnk" / "1.2").write_bytes(b"x" * 100)
    (layer / "sub").mkdir()
    (layer / "sub" / ".wh..wh.orph").mkdir()
    os.mknod(layer / "sub" / ".wh..opq", stat.S_IFCHR, os.makedev(0, 0))
    (layer / "sub" / "f").write_bytes(b"12345")
    assert kinds(compute_changes(layer, None, fmt)) == [("/sub", "A"), ("/sub/f", "A")]
    assert diff_size(layer, fmt) == 5


@pytest.mark.parametrize("fmt", FORMATS)
def test_many_entries_use_one_scan_with_the_same_answer(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    lower, layer = ramdir / "lower", ramdir / "layer"
    (lower / "d").mkdir(parents=True)
    (layer / "d").mkdir(parents=True)
    expected = []
    for i in range(40):  # above the threshold where the lower directory is read whole
        if i % 2:
            (lower / "d" / f"f{i:02d}").write_bytes(b"")
            expected.append((f"/d/f{i:02d}", "C"))
        else:
            expected.append((f"/d/f{i:02d}", "A"))
        (layer / "d" / f"f{i:02d}").write_bytes(b"")
    os.mknod(lower / "d" / "f00", stat.S_IFCHR, os.makedev(0, 0))  # a whiteout below is absent
    os.utime(layer / "d", (1, 1))
    assert kinds(compute_changes(layer, lower, fmt)) == [("/d", "C"), *expected]


@pytest.mark.parametrize("fmt", FORMATS)
def test_diff_size_counts_each_inode_once(ramdir: pathlib.Path, fmt: WhiteoutFormat) -> None:
    layer = ramdir / "layer"
    (layer / "d").mkdir(parents=True)
    (layer / "d" / "a").write_bytes(b"x" * 640)
    os.link(layer / "d" / "a", layer / "b")
    (layer / "c").write_bytes(b"y" * 10)
    os.symlink("d/a", layer / "s")
    whiteout(layer, "gone", fmt)
    opaque(layer / "d", fmt)
    assert diff_size(layer, fmt) == 650


def test_missing_layer(ramdir: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError):
        compute_changes(ramdir / "nope", None, WhiteoutFormat.OVERLAY)
    with pytest.raises(FileNotFoundError):
        diff_size(ramdir / "nope", WhiteoutFormat.OVERLAY)


# --- hypothesis: random layer stacks against a model ----------------------------------------

NAMES = ["a", "b", "a-b", "c"]
FILE, DIR, WHITEOUT, OPAQUE = "file", "dir", "whiteout", "opaque"
T0, T1 = 1_000_000_000, 1_000_000_007


@st.composite
def layer_specs(draw: st.DrawFn) -> dict[str, str]:
    """path -> kind, parents always directories of the same layer."""
    paths = draw(st.sets(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join),
                         max_size=8))
    spec: dict[str, str] = {}
    for path in sorted(paths, key=lambda p: p.count("/")):
        spec[path] = draw(st.sampled_from([FILE, FILE, DIR, WHITEOUT, OPAQUE]))
    for path in list(spec):
        parent = posixpath.dirname(path)
        while parent:
            if spec.get(parent) not in (DIR, OPAQUE):
                spec[parent] = DIR
            parent = posixpath.dirname(parent)
    return spec


def materialize(root: pathlib.Path, spec: dict[str, str], fmt: WhiteoutFormat, touched: set[str]) -> None:
    root.mkdir()
    for path in sorted(spec, key=lambda p: p.count("/")):
        kind, target = spec[path], root / path
        if kind == FILE:
            target.write_bytes(path.encode())
        elif kind in (DIR, OPAQUE):
            target.mkdir(mode=0o755)
            if kind == OPAQUE:
                opaque(target, fmt)
        else:
            whiteout(target.parent, target.name, fmt)
    for path in sorted(spec, key=lambda p: -p.count("/")):
        if spec[path] in (DIR, OPAQUE):
            t = T1 if path in touched else T0
            os.chmod(root / path, 0o755)
            os.utime(root / path, (t, t))


def union(layers: list[dict[str, str]]) -> dict[str, str]:
    """What overlayfs shows for ``layers`` (bottom first): path -> FILE or DIR."""
    shown: dict[str, str] = {}

    def drop_below(path: str) -> None:
        for p in [p for p in shown if p.startswith(path + "/")]:
            del shown[p]

    for layer in layers:
        for path in sorted(layer, key=lambda p: p.count("/")):
            kind = layer[path]
            if kind == WHITEOUT:
                shown.pop(path, None)
                drop_below(path)
            elif kind == FILE:
                shown[path] = FILE
                drop_below(path)
            else:
                if kind == OPAQUE or shown.get(path) != DIR:
                    drop_below(path)
                shown[path] = DIR
    return shown


def model_changes(top: dict[str, str], below: dict[str, str], touched: set[str]) -> list[tuple[str, str]]:
    out: dict[str, str] = {}

    def note_parent(path: str) -> None:
        parent = posixpath.dirname(path)
        if parent and parent not in out:
            out[parent] = "C"

    for path in sorted(top, key=lambda p: p.count("/")):
        kind = top[path]
        if kind == WHITEOUT:
            out.setdefault(path, "D")
            note_parent(path)
        elif path not in below:
            out[path] = "A"
            note_parent(path)
        elif kind == FILE or below[path] == FILE:
            out[path] = "C"
        else:
            if kind == OPAQUE or path in touched:
                out[path] = "C"
            if kind == OPAQUE:
                for hidden in below:
                    if posixpath.dirname(hidden) == path and hidden not in top:
                        out.setdefault(hidden, "D")
    return sorted(("/" + p, k) for p, k in out.items())


@pytest.mark.parametrize("fmt", FORMATS)
@given(lowers=st.lists(layer_specs(), min_size=1, max_size=3), top=layer_specs(),
       touch=st.sets(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)))
def test_random_stacks_match_the_model(ram_root: pathlib.Path, fmt: WhiteoutFormat,
                                       lowers: list[dict[str, str]], top: dict[str, str],
                                       touch: set[str]) -> None:
    import shutil
    import uuid

    work = ram_root / ("hyp-" + uuid.uuid4().hex[:8])
    work.mkdir()
    try:
        lower_dirs = []
        for i, spec in enumerate(lowers):
            materialize(work / f"l{i}", spec, WhiteoutFormat.OVERLAY, set())
            lower_dirs.append(work / f"l{i}")
        touched = {p for p in touch if top.get(p) in (DIR, OPAQUE)}
        materialize(work / "top", top, fmt, touched)
        below = union(lowers)
        with overlay(work / "view", list(reversed(lower_dirs))) as view:
            got = kinds(compute_changes(work / "top", view, fmt))
        assert got == model_changes(top, below, touched)
    finally:
        shutil.rmtree(work)


def test_deep_tree_does_not_recurse(ramdir: pathlib.Path) -> None:
    layer = ramdir / "layer"
    deep = str(layer)
    os.mkdir(deep)
    for _ in range(1500):  # deeper than Python's recursion limit (os.makedirs would recurse)
        deep += "/a"
        os.mkdir(deep)
    with open(os.path.join(deep, "f"), "wb") as f:
        f.write(b"bottom")
    got = compute_changes(layer, None, WhiteoutFormat.OVERLAY)
    assert len(got) == 1501 and got[-1].path == "/a" * 1500 + "/f"
    assert diff_size(layer, WhiteoutFormat.OVERLAY) == 6
