"""``aufs demo``: a guided tour on a small image built in code.

Owns the embedded demo image (three layers generated at run time with :mod:`tarfile`: an added
file, an overwritten file, a whiteout, an opaque directory, a hardlink, a symlink) and the
tour itself: pack the image as an OCI layout, import it into a temporary store, mount it,
show the merged tree and the layer each file comes from, write into a writable layer on top,
show that layer's ``changes`` and its ``diff`` tar, export the result as an OCI image, then
unmount and delete everything. Uses only the public API.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .image import export_image, import_image
from .image.exporter import write_oci_layout
from .store import Driver

__all__ = ["LAYER_NOTES", "demo_layers", "run_demo"]

# (path, kind, payload, mode): kind is "dir", "file", "symlink" (payload = target) or
# "hardlink" (payload = earlier path in the same layer).
_Entry = tuple[str, str, str, int]

_LAYERS: Sequence[tuple[str, Sequence[_Entry]]] = (
    (
        "base",
        (
            ("etc", "dir", "", 0o755),
            ("etc/os-release", "file", 'NAME="Demo Linux"\nVERSION="1.0"\n', 0o644),
            ("etc/motd", "file", "Welcome to Demo Linux 1.0\n", 0o644),
            ("etc/old.conf", "file", "legacy=true\n", 0o644),
            ("bin", "dir", "", 0o755),
            ("bin/hello", "file", "#!/bin/sh\necho hello from the base layer\n", 0o755),
            ("var", "dir", "", 0o755),
            ("var/cache", "dir", "", 0o755),
            ("var/cache/stale-1.bin", "file", "stale cache entry 1\n", 0o644),
            ("var/cache/stale-2.bin", "file", "stale cache entry 2\n", 0o644),
        ),
    ),
    (
        "update",
        (
            ("etc", "dir", "", 0o755),
            ("etc/motd", "file", "Welcome to Demo Linux 1.1 (updated)\n", 0o644),
            ("etc/.wh.old.conf", "file", "", 0o644),
            ("opt", "dir", "", 0o755),
            ("opt/app", "dir", "", 0o755),
            ("opt/app/app.py", "file", "print('hello from the app')\n", 0o755),
            ("opt/app/app-hardlink.py", "hardlink", "opt/app/app.py", 0o755),
            ("usr", "dir", "", 0o755),
            ("usr/local", "dir", "", 0o755),
            ("usr/local/bin", "dir", "", 0o755),
            ("usr/local/bin/app", "symlink", "/opt/app/app.py", 0o777),
        ),
    ),
    (
        "cache-reset",
        (
            ("var", "dir", "", 0o755),
            ("var/cache", "dir", "", 0o755),
            ("var/cache/.wh..wh..opq", "file", "", 0o644),
            ("var/cache/fresh.bin", "file", "fresh cache entry\n", 0o644),
            ("etc", "dir", "", 0o755),
            ("etc/hostname", "file", "demo\n", 0o644),
        ),
    ),
)

#: What each demo layer shows, for the tour's narration.
LAYER_NOTES: dict[str, str] = {
    "base": "a small tree: /etc, /bin/hello, two files in /var/cache",
    "update": "overwrites /etc/motd, deletes /etc/old.conf (a whiteout), adds /opt/app with a "
    "hardlink, and the symlink /usr/local/bin/app",
    "cache-reset": "makes /var/cache opaque (hiding its stale files), adds /etc/hostname",
}

_MTIME = 1_700_000_000  # fixed, so the demo image has the same digests on every run


def _layer_tar(entries: Sequence[_Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, kind, payload, mode in entries:
            info = tarfile.TarInfo(path)
            info.mode = mode
            info.mtime = _MTIME
            data = b""
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = payload
            else:
                data = payload.encode()
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def demo_layers() -> list[tuple[str, bytes]]:
    """The demo image's layers, base first: (name, uncompressed layer tar)."""
    return [(name, _layer_tar(entries)) for name, entries in _LAYERS]


def _origins(driver: object, ids: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """path -> name of the topmost layer that added or changed it (files only)."""
    origin: dict[str, str] = {}
    for layer_id, name in zip(ids, names):
        for change in driver.changes(layer_id):  # type: ignore[attr-defined]
            if change.kind.name in ("ADD", "MODIFY"):
                origin[change.path] = name
            else:
                origin.pop(change.path, None)
    return origin


def _tree_lines(root: Path, origin: dict[str, str]) -> list[tuple[str, str, str]]:
    """(indented name, kind/target, origin layer) for every entry under root, sorted."""
    rows: list[tuple[str, str, str]] = []

    def walk(directory: Path, rel: str, depth: int) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = f"{rel}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            indent = "    " * depth
            if entry.is_symlink():
                rows.append((f"{indent}{entry.name}", f"-> {os.readlink(entry.path)}", origin.get(path, "")))
            elif entry.is_dir(follow_symlinks=False):
                rows.append((f"{indent}{entry.name}/", "", ""))
                walk(Path(entry.path), path, depth + 1)
            else:
                links = f", {st.st_nlink} links" if st.st_nlink > 1 else ""
                rows.append((f"{indent}{entry.name}", f"{st.st_size} B, {oct(st.st_mode & 0o7777)}{links}", origin.get(path, "")))

    walk(root, "", 0)
    return rows


def run_demo(*, backend: str = "auto", stdout: IO[str] | None = None, keep: bool = False,
             rootless: str | None = None) -> int:
    """Run the tour; return 0. Everything it creates is removed before it returns.
    ``rootless``: the kind of store an ordinary user gets (see :class:`aufs.Driver`)."""
    from rich.console import Console
    from rich.table import Table


    console = Console(file=stdout, highlight=False)
    workdir = Path(tempfile.mkdtemp(prefix="aufs-demo-"))
    driver = None
    try:
        console.rule("[bold]aufs demo")
        console.print(f"Working in a temporary directory: {workdir}\n")

        console.print("[bold]1. An image built in code[/] (three layers, base first):")
        layers = demo_layers()
        notes = Table(box=None, show_header=False, padding=(0, 1, 0, 3))
        notes.add_column(style="cyan", no_wrap=True)
        notes.add_column()
        for name, _ in layers:
            notes.add_row(name, LAYER_NOTES[name])
        console.print(notes)
        layout = workdir / "image"
        digest = write_oci_layout(layout, [tar for _, tar in layers], compression="gzip", ref="demo")
        console.print(f"   packed as an OCI image layout (gzip layers): manifest {digest[:19]}...\n")

        console.print("[bold]2. Import[/] into a new store: every digest is verified, layer ids are")
        console.print("   OCI chainIDs, and the layers are decompressed and applied in parallel.")
        driver = Driver(workdir / "store", backend=backend, rootless=rootless)
        ids = import_image(driver, layout)
        names = [name for name, _ in layers]
        for name, layer_id in zip(names, ids):
            console.print(f"   [cyan]{name:12}[/] {layer_id[:16]}...  {driver.diff_size(layer_id)} B of content")
        before = sorted(driver.layers())
        again = import_image(driver, layout)
        same = again == ids and sorted(driver.layers()) == before
        console.print(f"   backend: [bold]{driver.backend}[/]; importing again creates "
                      f"{'nothing (same ids)' if same else 'new layers?!'}\n")

        console.print("[bold]3. Mount the image[/]: the merged tree, and the layer each file comes from:")
        origin = _origins(driver, ids, names)
        with driver.mount(ids[-1]) as root:
            table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
            table.add_column("path")
            table.add_column("details")
            table.add_column("from layer", style="cyan")
            for row in _tree_lines(Path(root), origin):
                table.add_row(*row)
            console.print(table)
            console.print("   /etc/old.conf is gone (whiteout); /var/cache holds only fresh.bin (opaque")
            console.print("   directory); /etc/motd is the update's; app-hardlink.py is app.py's inode.\n")

        console.print("[bold]4. A writable layer[/] on top; write, overwrite, delete through its mount:")
        driver.create("demo-rw", ids[-1])
        with driver.mount("demo-rw") as root:
            rootp = Path(root)
            (rootp / "home").mkdir(exist_ok=True)
            (rootp / "home" / "notes.txt").write_text("written through the union mount\n")
            (rootp / "etc" / "motd").write_text("Welcome to Demo Linux (customised)\n")
            (rootp / "etc" / "hostname").unlink()
            console.print("   wrote /home/notes.txt, rewrote /etc/motd, deleted /etc/hostname")
        console.print("   the image layers are untouched; the writable layer's [bold]changes[/]:")
        letters = {"ADD": "A", "MODIFY": "C", "DELETE": "D"}
        for change in driver.changes("demo-rw"):
            console.print(f"     {letters.get(change.kind.name, '?')} {change.path}")

        console.print("\n[bold]5. Its diff[/]: a standard OCI layer tar, deletions as whiteouts:")
        out = io.BytesIO()
        size = driver.diff("demo-rw", out)
        out.seek(0)
        with tarfile.open(fileobj=out, mode="r:") as tar:
            for member in tar:
                note = "  (whiteout: deletes /etc/hostname)" if member.name.endswith(".wh.hostname") else ""
                kind = "d" if member.isdir() else "-"
                console.print(f"     {kind} {member.name}{note}")
        console.print(f"   {size} bytes of tar\n")

        console.print("[bold]6. Export[/] the image plus the writable layer as a new OCI image:")
        exported = export_image(driver, "demo-rw", workdir / "exported", ref="custom")
        console.print(f"   manifest {exported[:19]}..., {len(ids) + 1} layers, in {workdir / 'exported'}")
        console.print("   (umoci and skopeo read it as oci:<dir>:custom)\n")

        console.print("[bold]7. Clean up[/]: unmount everything and delete the store.")
        return 0
    finally:
        if driver is not None:
            driver.cleanup()
            close = getattr(driver, "close", None)
            if callable(close):
                close()
        if keep:
            console.print(f"   kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            console.print("   done: nothing left behind.")
