"""`aufs demo` runs end to end, says what it shows, and leaves nothing behind."""
from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import pytest

from aufs.cli import main
from aufs.demo import demo_layers


def _demo_dirs() -> set:
    return set(Path(tempfile.gettempdir()).glob("aufs-demo-*"))


def test_demo_layers_show_every_feature() -> None:
    members = {}
    for name, tar in demo_layers():
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            members[name] = {m.name: m for m in t}
    every = [m for layer in members.values() for m in layer.values()]
    assert any(m.name.endswith("/.wh..wh..opq") for m in every)  # opaque directory
    assert any(m.name.split("/")[-1].startswith(".wh.") and not m.name.endswith(".opq") for m in every)
    assert any(m.islnk() for m in every) and any(m.issym() for m in every)
    assert "etc/motd" in members["base"] and "etc/motd" in members["update"]  # overwritten
    assert demo_layers() == demo_layers()  # deterministic: same digests every run


def test_demo_runs_and_cleans_up() -> None:
    before = _demo_dirs()
    out = io.StringIO()
    code = main(["demo"], stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    assert code == 0, text
    for expected in (
        "importing again creates nothing",
        "fresh.bin",
        "D /etc/hostname",
        "A /home/notes.txt",
        "etc/.wh.hostname",
        "4 layers",
        "nothing left behind",
    ):
        assert expected in text
    assert "stale-1.bin" not in text.split("3. Mount")[1].split("4. A writable")[0]
    assert "old.conf  " not in text
    assert _demo_dirs() == before


@pytest.mark.parametrize("backend", ["fuse-overlayfs"])
def test_demo_on_other_backends(backend: str) -> None:
    out = io.StringIO()
    code = main(["--backend", backend, "demo"], stdout=out, stderr=io.StringIO())
    if code == 8:
        pytest.skip(f"{backend} unavailable here")
    assert code == 0, out.getvalue()
