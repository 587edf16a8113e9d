"""The ``aufs`` command: a thin shell over the public API.

Commands import what they use when they run, so that ``aufs --help`` and a mistyped option
stay instant (no libarchive, cffi module or grpc loaded); none of those imports hides a cycle:
the CLI is a client of the package, nothing imports it.

Owns argument parsing, output (human text on a terminal, ``--json`` for machines), progress
bars (rich, only when stderr is a terminal) and the mapping of errors to exit codes. Every
subcommand calls one or two public functions; no store logic lives here.

Exit codes:

====  ===========================================================
0     success
1     any other aufs error
2     usage error (bad arguments, bad layer id)
3     layer or image not found, or no store at --home
4     layer already exists
5     busy: layer in use (mounted, or a parent), store locked
6     bad image: malformed image, digest mismatch
7     bad layer tar: corrupt, unsupported or unsafe archive
8     cannot mount here: no usable backend, mount failure
9     no space left on the store's filesystem
10    operating-system error (permissions, missing files, ...)
11    ``aufs check``: inconsistencies remain (run ``aufs check --repair``)
130   interrupted (Ctrl-C)
====  ===========================================================
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    BinaryIO,
    Callable,
    cast,
)

from . import __version__
from .errors import (
    ArchiveError,
    AufsError,
    BackendUnavailable,
    ImageError,
    ImageNotFound,
    InvalidLayerId,
    LayerExists,
    LayerInUse,
    LayerNotFound,
    MountError,
    NoSpace,
    PathTooLong,
    StoreLocked,
    StoreNotFound,
    StoreReadOnly,
)

if TYPE_CHECKING:  # pragma: no cover
    from .store import Driver

__all__ = ["EXIT_CODES", "console_main", "default_home", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CODES: tuple[tuple[type, int], ...] = (
    # most specific first
    (InvalidLayerId, EXIT_USAGE),
    (LayerNotFound, 3),
    (ImageNotFound, 3),
    (StoreNotFound, 3),
    (StoreReadOnly, 10),
    (LayerExists, 4),
    (LayerInUse, 5),
    (StoreLocked, 5),
    (ImageError, 6),
    (ArchiveError, 7),
    (BackendUnavailable, 8),
    (MountError, 8),
    (NoSpace, 9),
    (PathTooLong, 10),
    (AufsError, EXIT_ERROR),
    (ValueError, EXIT_USAGE),
    (OSError, 10),
)
EXIT_INTERRUPTED = 130


def default_home() -> Path:
    """``$AUFS_HOME``, else ``/var/lib/aufs`` for root, else ``~/.local/share/aufs``."""
    env = os.environ.get("AUFS_HOME")
    if env:
        return Path(env)
    from .kernel import in_user_namespace

    if os.geteuid() == 0 and not in_user_namespace():  # root of a namespace is still its user
        return Path("/var/lib/aufs")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "aufs"


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an exception (see the module docstring)."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_ERROR


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so ``main`` can return the usage code."""

    def error(self, message: str) -> NoReturn:  # type: ignore[name-defined]  # noqa: F821
        raise _UsageError(f"{self.prog}: {message}")


# ---------------------------------------------------------------- output helpers


class _Output:
    """Where results and messages go; decides between text, JSON and progress bars."""

    def __init__(self, as_json: bool, stdout: IO[str], stderr: IO[str]) -> None:
        self.as_json = as_json
        self.stdout = stdout
        self.stderr = stderr
        self.interactive = _isatty(stderr)

    def result(self, text: str, data: Any) -> None:
        if self.as_json:
            self.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        elif text:
            self.stdout.write(text + ("" if text.endswith("\n") else "\n"))

    @contextmanager
    def progress(self, description: str) -> Iterator[Callable[[str, int, int | None], None]]:
        """Yields ``update(task_key, done, total)``; draws bars only on a terminal."""
        if not self.interactive:
            yield lambda key, done, total: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = Console(file=self.stderr)
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=True) as bars:
            tasks: dict[str, Any] = {}

            def update(key: str, done: int, total: int | None) -> None:
                if key not in tasks:
                    label = f"{description} {key[:12]}" if key else description
                    tasks[key] = bars.add_task(label, total=total)
                bars.update(tasks[key], completed=done, total=total)

            yield update


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


class _CountingReader:
    """Reads through a binary file, reporting bytes read so far (for apply's progress)."""

    def __init__(self, raw: IO[bytes], report: Callable[[int], None]) -> None:
        self._raw = raw
        self._report = report
        self._done = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._done += len(data)
        self._report(self._done)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer)[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class _CountingWriter:
    def __init__(self, raw: IO[bytes], report: Callable[[int], None]) -> None:
        self._raw = raw
        self._report = report
        self._done = 0

    def write(self, data: Any) -> int:
        n = self._raw.write(data)
        self._done += len(memoryview(data))
        self._report(self._done)
        return n if n is not None else len(memoryview(data))

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._raw.flush()


# ---------------------------------------------------------------- commands


CLI_HOLDER = "aufs-mount"
"""The persistent holder of mounts made by ``aufs mount``: they stay until ``aufs umount``."""


def _open_driver(args: argparse.Namespace, *, create: bool = False, holder: str | None = None) -> Driver:
    """The store at ``--home``; only the commands that fill a store (create, import, serve) make one."""
    from .store import Driver

    return Driver(args.home, backend=args.backend, create=create, holder=holder,
                  rootless=args.rootless or None)


def _close(driver: Driver) -> None:
    close = getattr(driver, "close", None)
    if callable(close):
        close()


def cmd_import(args: argparse.Namespace, out: _Output) -> int:
    from .image import import_image

    _require_input(args.source)
    driver = _open_driver(args, create=True)
    try:
        with out.progress("layer") as update:
            ids = import_image(
                driver,
                args.source,
                platform=args.platform,
                ref=args.ref,
                progress=lambda layer_id, done, total: update(layer_id, done, total),
            )
    except ImageError as exc:
        if "with ref=" in exc.message:  # the API's keyword is the CLI's option
            exc.message = exc.message.replace("with ref=", "with --ref")
            exc.args = (exc.message,)
        raise
    finally:
        _close(driver)
    out.result(ids[-1], {"layers": ids, "top": ids[-1]})
    return EXIT_OK


def cmd_export(args: argparse.Namespace, out: _Output) -> int:
    from .image import export_image

    driver = _open_driver(args)
    try:
        digest = export_image(
            driver, args.layer, args.dest, compression="gzip" if args.gzip else "none", ref=args.ref,
            image=args.image,
        )
    finally:
        _close(driver)
    out.result(digest, {"manifest_digest": digest, "dest": str(args.dest), "layer": args.layer})
    return EXIT_OK


def cmd_images(args: argparse.Namespace, out: _Output) -> int:
    from .image import list_images

    driver = _open_driver(args)
    try:
        images = list_images(driver)
    finally:
        _close(driver)
    rows = [image.as_dict() for image in images]
    header = ("NAME", "IMAGE ID", "PLATFORM", "LAYERS", "TOP LAYER", "CREATED")
    table = [header]
    for image, row in zip(images, rows):
        state = f"  [{len(image.missing_layers)} layer(s) missing]" if image.missing_layers else ""
        created = str(row["created"] or "")[:19].replace("T", " ")
        for name in image.refs or ("<none>",):
            table.append((name, image.short_id, image.platform, str(len(image.layers)), image.top[:12],
                          created + state))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)
    out.result(text if images else "(no images)", rows)
    return EXIT_OK


def cmd_rmi(args: argparse.Namespace, out: _Output) -> int:
    from .image import remove_image

    driver = _open_driver(args)
    results = []
    lines = []
    try:
        for ref in args.images:
            done = remove_image(driver, ref, keep_layers=args.keep_layers)
            results.append(done.as_dict())
            lines += [f"untagged: {name}" for name in done.untagged]
            if done.deleted:
                lines.append(f"deleted: {done.image.id}")
            lines += [f"removed layer: {layer_id}" for layer_id in done.removed_layers]
            lines += [f"kept layer: {layer_id}: {reason}" for layer_id, reason in done.kept_layers]
    finally:
        _close(driver)
    out.result("\n".join(lines), results)
    return EXIT_OK


def _require_input(path: str | os.PathLike[str]) -> None:
    """One error, the same for every command, for an input file that is not there."""
    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", os.fspath(path))


def cmd_create(args: argparse.Namespace, out: _Output) -> int:
    driver = _open_driver(args, create=True)
    try:
        driver.create(args.layer, args.parent)
    finally:
        _close(driver)
    out.result(args.layer, {"id": args.layer, "parent": args.parent})
    return EXIT_OK


def cmd_apply(args: argparse.Namespace, out: _Output) -> int:
    with ExitStack() as stack:
        if args.diff == "-":
            source: IO[bytes] = sys.stdin.buffer
            total: int | None = None
        else:
            _require_input(args.diff)
            source = stack.enter_context(open(args.diff, "rb"))
            total = os.fstat(source.fileno()).st_size
        driver = _open_driver(args)
        stack.callback(_close, driver)
        with out.progress("apply") as update:
            reader = _CountingReader(source, lambda done: update("", done, total))
            size = driver.apply_diff(args.layer, cast(BinaryIO, reader))
    out.result(f"{args.layer}: {_human(size)} of content", {"id": args.layer, "diff_size": size})
    return EXIT_OK


def cmd_ls(args: argparse.Namespace, out: _Output) -> int:
    driver = _open_driver(args)
    try:
        rows = []
        for layer_id in sorted(driver.layers()):
            rows.append(
                {
                    "id": layer_id,
                    "parent": driver.parent(layer_id),
                    "diff_size": driver.diff_size(layer_id),
                    "mounted": driver.is_mounted(layer_id),
                }
            )
    finally:
        _close(driver)
    out.result(_render_tree(rows), rows)
    return EXIT_OK


def _render_tree(rows: list[dict[str, Any]]) -> str:
    children: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        children.setdefault(row["parent"], []).append(row)
    lines: list[str] = []

    def label(row: dict[str, Any]) -> str:
        mark = "  [mounted]" if row["mounted"] else ""
        return f"{row['id']}  {_human(row['diff_size'])}{mark}"

    def walk(parent: str, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, row in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(prefix + ("└── " if last else "├── ") + label(row))
            walk(row["id"], prefix + ("    " if last else "│   "))

    for root in children.get(None, []):
        lines.append(label(root))
        walk(root["id"], "")
    return "\n".join(lines) if lines else "(no layers)"


def cmd_mount(args: argparse.Namespace, out: _Output) -> int:
    driver = _open_driver(args, holder=CLI_HOLDER)
    try:
        # one persistent reference, whatever the number of `aufs mount` calls: the mount stays
        # after this process exits, `aufs check` knows it is wanted, `aufs umount` releases it
        if driver.holder in driver.holders(args.layer) and driver.is_mounted(args.layer):
            path = driver.mountpoint(args.layer)
        else:
            path = driver.get(args.layer)
    finally:
        _close(driver)
    out.result(path, {"id": args.layer, "path": path})
    return EXIT_OK


def cmd_umount(args: argparse.Namespace, out: _Output) -> int:
    driver = _open_driver(args, holder=CLI_HOLDER)
    try:
        holders = driver.holders(args.layer)
        if not driver.is_mounted(args.layer):
            mounted, text = False, f"{args.layer}: not mounted"
        else:
            if driver.holder in holders:
                driver.put(args.layer)
            elif not holders:
                # a mount nobody holds (left by an older aufs, or adopted): take it down
                driver.get(args.layer)
                driver.put(args.layer)
            mounted = driver.is_mounted(args.layer)
            others = driver.holders(args.layer)
            text = f"{args.layer}: still mounted (held by {', '.join(sorted(others))})" if mounted else ""
    finally:
        _close(driver)
    out.result(text, {"id": args.layer, "mounted": mounted})
    return EXIT_OK


def cmd_diff(args: argparse.Namespace, out: _Output) -> int:
    to_stdout = args.output in (None, "-")
    if to_stdout and _isatty(out.stdout):
        raise _UsageError("aufs diff: refusing to write a tar to a terminal; use -o FILE or a pipe")
    with ExitStack() as stack:
        target: IO[bytes] = sys.stdout.buffer if to_stdout else stack.enter_context(open(args.output, "wb"))
        driver = _open_driver(args)
        stack.callback(_close, driver)
        with out.progress("diff") as update:
            writer = _CountingWriter(target, lambda done: update("", done, None))
            written = driver.diff(args.layer, cast(BinaryIO, writer))
        target.flush()
    if not to_stdout:
        out.result(f"{args.output}: {_human(written)}", {"id": args.layer, "bytes": written, "output": args.output})
    elif out.as_json:  # stdout carries the tar: the JSON goes to stderr
        out.stderr.write(json.dumps({"id": args.layer, "bytes": written}) + "\n")
    return EXIT_OK


_KIND_LETTER = {"ADD": "A", "MODIFY": "C", "DELETE": "D"}


def cmd_changes(args: argparse.Namespace, out: _Output) -> int:
    driver = _open_driver(args)
    try:
        changes = driver.changes(args.layer)
    finally:
        _close(driver)
    rows = [{"path": c.path, "kind": c.kind.name} for c in changes]
    text = "\n".join(f"{_KIND_LETTER.get(r['kind'], '?')} {r['path']}" for r in rows)
    out.result(text, rows)
    return EXIT_OK


def cmd_rm(args: argparse.Namespace, out: _Output) -> int:
    driver = _open_driver(args)
    removed: list[str] = []
    try:
        for layer_id in args.layers:
            driver.remove(layer_id, force=args.force)
            removed.append(layer_id)
    except BaseException:
        if removed:  # say what happened before the failure; the error says the rest
            out.stderr.write(f"aufs rm: removed {', '.join(removed)}\n")
        raise
    finally:
        _close(driver)
    out.result("\n".join(removed), {"removed": removed})
    return EXIT_OK


def cmd_status(args: argparse.Namespace, out: _Output) -> int:
    driver = _open_driver(args)
    try:
        status = driver.status()
    finally:
        _close(driver)
    width = max((len(k) for k in status), default=0)
    shown = {k: ("yes" if v else "no") if isinstance(v, bool) else str(v) for k, v in status.items()}
    out.result("\n".join(f"{k.ljust(width)}  {v}" for k, v in shown.items()), status)
    return EXIT_OK


def cmd_unshare(args: argparse.Namespace, out: _Output) -> int:
    driver = _open_driver(args)
    try:
        if driver.rootless_kind != "userns":
            raise _UsageError(f"aufs unshare: {driver.home} is not a userns store: its mounts are seen "
                              "from every process already")
    finally:
        _close(driver)
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        del argv[0]
    argv = argv or [os.environ.get("SHELL") or "/bin/sh"]
    env = dict(os.environ, AUFS_HOME=str(driver.home))
    try:
        # a child, not exec: this process stays in the namespace's count until it ends, then
        # stops the holder if nothing is mounted
        return subprocess.call(argv, env=env)
    except FileNotFoundError:
        raise _UsageError(f"aufs unshare: no such command: {argv[0]}") from None


def cmd_cleanup(args: argparse.Namespace, out: _Output) -> int:
    driver = _open_driver(args)
    try:
        driver.cleanup()
    finally:
        _close(driver)
    out.result("", {"home": str(args.home), "cleaned": True})
    return EXIT_OK


EXIT_INCONSISTENT = 11


def cmd_check(args: argparse.Namespace, out: _Output) -> int:
    driver = _open_driver(args)
    try:
        report = driver.check(repair=args.repair)
    finally:
        _close(driver)
    out.result(str(report), report.as_dict())
    # scripts can tell "consistent (now)" from "inconsistencies remain" by the exit code
    return EXIT_OK if report.ok else EXIT_INCONSISTENT


def cmd_serve_docker(args: argparse.Namespace, out: _Output) -> int:
    import logging

    from .serve import docker

    # the server's own log only; refusals are answers to dockerd, not failures: --debug shows them
    handler = logging.StreamHandler(out.stderr)
    handler.setFormatter(logging.Formatter("aufs serve docker: %(message)s"))
    served = logging.getLogger("aufs.serve")
    served.addHandler(handler)
    served.setLevel(logging.DEBUG if args.debug else logging.WARNING)
    served.propagate = False

    try:
        name = docker.check_plugin_name(args.name)
    except docker.BadRequest as exc:
        raise _UsageError(f"aufs serve docker: {exc}") from None
    socket = args.socket
    if socket is None:
        socket = docker.default_socket(name)
        os.makedirs(os.path.dirname(socket), mode=0o755, exist_ok=True)  # dockerd's, if it is not up yet
    # dockerd's references outlive this process: a restarted server must Put what this one Got
    driver = _open_driver(args, create=True, holder=docker.holder_name(name))
    try:
        docker.serve_docker(driver, socket, name=name,
                            ready=lambda server: print(f"aufs serve docker: {name} on {server.socket_path}",
                                                       file=out.stderr, flush=True))
    finally:
        _close(driver)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: _Output) -> int:
    from .demo import run_demo

    return run_demo(backend=args.backend, stdout=out.stdout, keep=args.keep, rootless=args.rootless or None)


# ---------------------------------------------------------------- parser


def _common(parser: argparse.ArgumentParser, defaults: bool) -> None:
    # Accepted before or after the subcommand; values given after it win.
    suppress = None if defaults else argparse.SUPPRESS
    parser.add_argument(
        "--home",
        type=Path,
        default=default_home() if defaults else argparse.SUPPRESS,
        help="store directory (default: $AUFS_HOME, else /var/lib/aufs as root, else ~/.local/share/aufs)",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "aufs", "overlay", "fuse-overlayfs"),
        default="auto" if defaults else argparse.SUPPRESS,
        help="union backend (default: auto)",
    )
    parser.add_argument(
        "--rootless",
        choices=("override_stat", "userns"),
        default=os.environ.get("AUFS_ROOTLESS") or None if defaults else argparse.SUPPRESS,
        help="for a new store of an ordinary user: owners recorded in xattrs, mounted with fuse-overlayfs "
        "(override_stat, the default) or real in a user namespace of the user's subordinate ids, kernel "
        "overlayfs, mounts seen through `aufs unshare` (userns) (default: $AUFS_ROOTLESS)",
    )
    parser.add_argument("--json", action="store_true", default=False if defaults else suppress, help="machine-readable output")
    parser.add_argument("--debug", action="store_true", default=False if defaults else suppress, help="show tracebacks")


def cmd_serve_containerd(args: argparse.Namespace, out: _Output) -> int:
    try:
        from .serve.containerd import serve_containerd
    except ImportError as exc:
        raise _UsageError(f"aufs serve containerd needs grpcio and protobuf: pip install 'aufs[containerd]' ({exc})")
    import logging

    # the server's own log only: other libraries' loggers stay as quiet as they were
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("aufs serve containerd: %(message)s"))
    served = logging.getLogger("aufs.serve")
    served.addHandler(handler)
    served.setLevel(logging.DEBUG if args.debug else logging.INFO)
    served.propagate = False
    serve_containerd(_open_driver(args, create=True), args.socket, group=args.group)
    return EXIT_OK


def _add_serve(add: Callable[..., argparse.ArgumentParser]) -> None:
    """``aufs serve ENGINE``: one sub-subcommand per container engine."""
    serve = add("serve", None, "serve the store to a container engine, in the foreground")
    engines = serve.add_subparsers(dest="engine", metavar="ENGINE", parser_class=_Parser)
    engines.required = True
    help_text = ("containerd proxy snapshotter on a unix socket (config: [proxy_plugins.NAME] "
                 'type = "snapshot", address = SOCKET); stops on SIGTERM/SIGINT')
    p = engines.add_parser("containerd", help=help_text, description=help_text)
    _common(p, defaults=False)
    p.set_defaults(func=cmd_serve_containerd)
    p.add_argument("--socket", required=True, type=Path, help="unix socket to listen on (created 0600)")
    p.add_argument("--group", help="make the socket 0660 and owned by this group (name or gid)")
    p = engines.add_parser("docker", help="Docker's graph-driver plugin (dockerd --experimental --storage-driver NAME)",
                           description="Serve the store as Docker's v1 graph-driver plugin until SIGTERM.")
    _common(p, defaults=False)
    p.set_defaults(func=cmd_serve_docker)
    p.add_argument("--name", default="aufs-store",
                   help="plugin name, dockerd's --storage-driver (default: aufs-store)")
    p.add_argument("--socket", help="unix socket (default: /run/docker/plugins/NAME.sock)")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    parser = _Parser(
        prog="aufs",
        description="Container image layers on disk, mounted as one root filesystem.",
        epilog="exit codes: 0 ok, 1 aufs error, 2 usage, 3 layer, image or store not found, 4 layer exists, 5 busy, "
        "6 bad image, 7 bad layer tar, 8 cannot mount, 9 no space, 10 system error, "
        "11 check found inconsistencies, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"aufs {__version__}")
    _common(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, func: Callable[[argparse.Namespace, _Output], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p, defaults=False)
        p.set_defaults(func=func)
        return p

    p = add("import", cmd_import, "import a docker-save tarball or an OCI layout (dir or tar); prints the top layer id")
    p.add_argument("source", help="image tarball or OCI layout directory")
    p.add_argument("--platform", help="os/arch[/variant] to pick from a multi-platform image (e.g. linux/arm64)")
    p.add_argument("--ref", help="image name to pick when the source holds several (e.g. latest, debian:12)")

    p = add("export", cmd_export, "write an image or a layer chain as an OCI image layout; prints the manifest digest")
    p.add_argument("layer", metavar="image-or-layer", help="a layer id, or an image name or id from `aufs images`")
    p.add_argument("dest", type=Path, help="new directory (must not exist, or be empty)")
    p.add_argument("--gzip", action="store_true", help="gzip-compress the layer blobs")
    p.add_argument("--ref", default="latest", help="name recorded in index.json (default: latest)")
    p.add_argument("--image", help="the imported image the layer chain extends (when several share its base)")

    add("images", cmd_images, "list imported images: names, id, platform, layers")

    p = add("rmi", cmd_rmi, "remove images by name or id, and their layers that nothing else uses (like docker rmi)")
    p.add_argument("images", nargs="+", metavar="image")
    p.add_argument("--keep-layers", action="store_true", help="remove only the image record, keep its layers")

    p = add("create", cmd_create, "create an empty layer")
    p.add_argument("layer")
    p.add_argument("--parent", "-p", help="parent layer")

    p = add("apply", cmd_apply, "apply a layer tar (plain, gzip, zstd, bzip2, xz; '-' for stdin); prints the diff size")
    p.add_argument("layer")
    p.add_argument("diff", help="layer tar file, or - for standard input")

    add("ls", cmd_ls, "list layers as a tree, with their sizes")

    p = add("mount", cmd_mount, "mount a layer with its ancestors; prints the path (stays mounted until umount)")
    p.add_argument("layer")

    p = add("umount", cmd_umount, "unmount a layer mounted by `aufs mount` (unless a running process still uses it)")
    p.add_argument("layer")

    p = add("diff", cmd_diff, "write a layer's own changes as a tar (to stdout or -o FILE)")
    p.add_argument("layer")
    p.add_argument("-o", "--output", help="output file (default: standard output)")

    p = add("changes", cmd_changes, "list a layer's changes against its parent (A added, C changed, D deleted)")
    p.add_argument("layer")

    p = add("rm", cmd_rm, "remove layers (children before parents); prints what it removed")
    p.add_argument("layers", nargs="+", metavar="layer")
    p.add_argument("--force", "-f", action="store_true", help="unmount and remove even while the layer is held")

    add("status", cmd_status, "show the store's backend, home and counts")
    p = add("unshare", cmd_unshare, "run a command (default: $SHELL) in a userns store's namespace, "
            "where its mounts are and its owners read as in the image")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="command")
    add("cleanup", cmd_cleanup, "unmount everything under the store's home")

    p = add("check", cmd_check, "report inconsistencies of the store (exit 11 if any remain)")
    p.add_argument("--repair", action="store_true", help="fix what is found")

    _add_serve(add)

    p = add("demo", cmd_demo, "build, import, mount and explore a small embedded image in a temporary store")
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> int:
    """Run the ``aufs`` command with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except _UsageError as exc:
        stderr.write(parser.format_usage() + str(exc) + "\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    out = _Output(args.json, stdout, stderr)
    try:
        return int(args.func(args, out))
    except _UsageError as exc:
        stderr.write(f"{exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr.write("aufs: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK if not args.debug else EXIT_ERROR
    except (AufsError, OSError, ValueError) as exc:
        if args.debug:
            traceback.print_exc(file=stderr)
        return _report_error(args, stderr, _one_line(exc), exc, exit_code_for(exc))
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on request
        if args.debug:
            traceback.print_exc(file=stderr)
            hint = ""
        else:
            hint = " (rerun with --debug for the traceback)"
        return _report_error(args, stderr, f"internal error: {type(exc).__name__}: {_one_line(exc)}{hint}",
                             exc, EXIT_ERROR)


def _report_error(args: argparse.Namespace, stderr: IO[str], message: str, exc: BaseException, code: int) -> int:
    """One line on stderr: ``aufs COMMAND: message``, or under ``--json`` one JSON object
    ``{"error", "kind", "exit"}`` (plus ``layer_id`` and ``path`` when the error names them)."""
    if args.json:
        record: dict[str, Any] = {"error": message, "kind": type(exc).__name__, "exit": code,
                                  "command": args.command}
        for field in ("layer_id", "path"):
            value = getattr(exc, field, None)
            if value is not None:
                record[field] = str(value)
        stderr.write(json.dumps(record) + "\n")
    else:
        stderr.write(f"aufs {args.command}: {message}\n")
    return code


def _one_line(exc: BaseException) -> str:
    if (isinstance(exc, OSError) and not isinstance(exc, AufsError) and exc.strerror
            and exc.filename is not None):
        # "[Errno 2] No such file or directory: 'x'" -> "no such file or directory: x"
        return " ".join(f"{exc.strerror[:1].lower()}{exc.strerror[1:]}: {os.fsdecode(exc.filename)}".split())
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, AufsError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return " ".join(text.split())


def console_main() -> None:
    """Console-script entry point (``aufs``)."""
    sys.exit(main())
