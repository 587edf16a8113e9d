"""``import_image``: an image (docker save tarball, OCI layout directory or tarball) into a store.

Owns the import pipeline. The image metadata is resolved and verified first
(:mod:`aufs.image.manifests`); then every layer that the store lacks is created under its
chainID and filled from its blob. Layers of a store are independent directories, so the
blobs are read, hashed, decompressed and applied in parallel threads (decompression, hashing
and extraction all run outside the GIL). One short step waits for the layers below: a layer
whose tar implies parent directories it does not list gives them the metadata its parent chain
shows (see ``Driver.apply_diff``), so it reads that chain only once every layer below is in
place. Each blob's sha256 and each layer's diffID are checked once its stream has been
consumed to the end; on any failure every layer this call created is removed again, so the
store is left as it was. A crash cannot leave a half-imported layer for a later import to
trust either: see :mod:`aufs.image.journal`. Once every layer is in place (and the journal is
gone), the image itself is recorded (:mod:`aufs.image.records`): a crash before that leaves no
record, only complete layers.
"""
from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, BinaryIO, Callable, cast

from ..errors import ImageError, LayerExists, LayerNotFound
from . import journal, records
from .digests import HashingReader, chain_ids
from .manifests import LayerBlob, ResolvedImage, resolve_image
from .sources import ImageSource, open_source
from .streams import blame_blob, open_layer_stream

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Driver

__all__ = ["ProgressCallback", "import_image"]

#: ``progress(layer_id, done_bytes, total_bytes)``: bytes of the layer's blob (as stored,
#: usually compressed) read so far out of its size. Called from worker threads, possibly
#: concurrently for different layers; always ends with ``done_bytes == total_bytes`` for every
#: layer of the image, including layers the store already had (reported done at once). An
#: exception raised by the callback aborts the import like any other error.
ProgressCallback = Callable[[str, int, int], None]


_MAX_ATTEMPTS = 20


class _Cancelled(Exception):
    """Raised inside a worker's stream when another layer already failed."""


class _Replan(Exception):
    """The store changed under the plan (another import): undo and plan again."""


class _Applied:
    """Whether a layer this import fills is in place yet: set once its apply is done, or
    once it failed (then ``ok`` stays False and the layers above it give up)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False

    def mark(self, ok: bool) -> None:
        self.ok = self.ok or ok
        self.event.set()


def _default_workers(jobs: int) -> int:
    return max(1, min(jobs, (os.cpu_count() or 2) + 1, 8))


def import_image(
    driver: Driver,
    source: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    platform: str | None = None,
    ref: str | None = None,
    workers: int | None = None,
) -> list[str]:
    """Import an image into ``driver``'s store; return its layer ids, base first.

    :param source: a ``docker save`` tarball, an OCI image layout directory, or an OCI layout
        packed as an (uncompressed) tarball.
    :param progress: see :data:`ProgressCallback`.
    :param platform: ``"os/arch[/variant]"`` (e.g. ``"linux/arm64"``) to pick from a
        multi-platform index; default: this machine's platform, else linux/amd64.
    :param ref: the image name to pick when the source holds several (an OCI
        ``org.opencontainers.image.ref.name`` annotation such as ``"latest"``, or a docker
        ``RepoTags`` entry such as ``"debian:12"``).
    :param workers: number of layers processed at once (default: cores + 1, at most 8).

    Each layer's id is the hex of its OCI chainID, so a layer shared by several images is
    stored once, and importing an image again creates nothing (its blobs' digests are still
    checked). The top id can be passed to ``driver.create(new_id, parent=top)`` to get a
    writable layer over the image, or mounted with ``driver.get(top)``.

    The image is recorded once its layers are in place: its config and manifest blobs as
    read, its platform, layer ids and names (the OCI ref name or containerd image name of its
    index entry, or the docker ``RepoTags``), listed by :func:`aufs.list_images` and used by
    :func:`aufs.export_image`. Importing the same image again (same config) adds names and
    creates no second record; a name another image had moves to this one.

    Raises :class:`aufs.ImageError` for a malformed or unsupported image (naming the file and
    the problem), :class:`aufs.DigestMismatch` when a blob or diffID does not match, and the
    store's errors (e.g. :class:`aufs.UnsafeArchive`) from applying a layer. On any error,
    the layers this call created are removed.
    """
    with open_source(source) as src:
        image = resolve_image(src, platform=platform, ref=ref)
        ids = chain_ids([layer.diff_id for layer in image.layers])
        if not ids:
            raise ImageError(f"{src.description}: the image has no layers")
        record = records.ImageRecord(
            id=image.config_digest,
            refs=image.refs,
            platform=image.platform,
            layers=tuple(ids),
            config=image.config_bytes,
            manifest=image.manifest_bytes,
            manifest_digest=image.manifest_digest,
            format=image.format,
            imported=records.utc_now(),
        )
        for _ in range(_MAX_ATTEMPTS):
            _Importer(driver, src, image, ids, progress, workers).run()
            try:
                records.save_record(driver, record)
            except LayerNotFound:  # another process removed a layer meanwhile: import it again
                continue
            return ids
        raise ImageError("gave up importing: other processes kept removing its layers")


class _Importer:
    def __init__(
        self,
        driver: Driver,
        source: ImageSource,
        image: ResolvedImage,
        ids: list[str],
        progress: ProgressCallback | None,
        workers: int | None,
    ) -> None:
        self.driver = driver
        self.source = source
        self.image = image
        self.ids = ids
        self.progress = progress
        self.workers = workers
        self.cancel = threading.Event()
        self.created: list[str] = []
        # the layers being filled by this import's jobs, base first
        self.applied: dict[str, _Applied] = {}

    def run(self) -> None:
        wanted = set(self.ids)
        for _ in range(_MAX_ATTEMPTS):
            journal.recover(self.driver)
            busy = journal.busy_layers(self.driver) & wanted
            if busy:  # another import is creating some of these layers right now
                journal.wait_for(self.driver, busy)
                continue
            missing = [layer_id for layer_id in self.ids if not self.driver.exists(layer_id)]
            with journal.ImportJournal(self.driver) as record:
                record.record(missing)
                try:
                    jobs = self._create_missing_layers(set(missing))
                except (LayerExists, _Replan):  # lost a race with another import: undo, plan again
                    self._remove_created()
                    continue
                except BaseException:
                    self._remove_created()
                    raise
                try:
                    self._run_jobs(jobs)
                except BaseException:
                    self.cancel.set()
                    self._remove_created()
                    raise
                return
        raise ImageError("gave up importing: other imports kept creating the same layers")

    def _remove_created(self) -> None:
        for layer_id in reversed(self.created):  # children before their parents
            try:
                self.driver.remove(layer_id)
            except Exception as exc:  # noqa: BLE001 - keep removing the others; say what is left
                warnings.warn(f"aufs: could not remove partly imported layer {layer_id}: {exc}", stacklevel=3)
        self.created.clear()

    def _create_missing_layers(self, journaled: set[str]) -> list[tuple[Callable[[], None], _Applied | None]]:
        """Create the missing layers (in order: a child needs its parent) and list the work.

        Only layers named in this import's journal may be created: one that vanished since
        the journal was written (another process recovering a dead import) means plan again.
        """
        jobs: list[tuple[Callable[[], None], _Applied | None]] = []
        self.applied = {}
        parent: str | None = None
        for index, (layer, layer_id) in enumerate(zip(self.image.layers, self.ids)):
            if self.driver.exists(layer_id):
                have = self.driver.parent(layer_id)
                if have != parent:
                    raise ImageError(
                        f"layer {layer_id} is already in the store with parent {have}, "
                        f"but its chainID says {parent}: the store is inconsistent",
                        layer_id=layer_id,
                    )
                jobs.append((self._verify_job(index, layer, layer_id), None))
            else:
                if layer_id not in journaled:
                    raise _Replan(layer_id)
                self.driver.create(layer_id, parent)
                self.created.append(layer_id)
                below = list(self.applied.values())
                self.applied[layer_id] = _Applied()
                jobs.append((self._apply_job(index, layer, layer_id, below), self.applied[layer_id]))
            parent = layer_id
        return jobs

    def _on_read(self, layer_id: str, total: int) -> Callable[[int], None]:
        progress = self.progress
        cancel = self.cancel

        def on_read(done: int) -> None:
            if cancel.is_set():
                raise _Cancelled()
            if progress is not None:
                progress(layer_id, done, total)

        return on_read

    def _what(self, index: int, layer: LayerBlob) -> str:
        return f"{self.source.description}: layer {index} ({layer.name})"

    def _wait_for(self, below: list[_Applied]) -> Callable[[], None]:
        """Block until every layer of ``below`` is applied; _Cancelled if one failed."""

        def wait_below() -> None:
            for applied in below:
                while not applied.event.wait(0.1):
                    if self.cancel.is_set():
                        raise _Cancelled()
                if not applied.ok:
                    raise _Cancelled()

        return wait_below

    def _apply_job(self, index: int, layer: LayerBlob, layer_id: str, below: list[_Applied]) -> Callable[[], None]:
        def job() -> None:
            with self.source.open(layer.name) as blob:
                stream = open_layer_stream(
                    blob,
                    blob_digest=layer.digest,
                    diff_id=layer.diff_id,
                    what=self._what(index, layer),
                    on_read=self._on_read(layer_id, layer.size),
                )
                try:
                    # extraction runs in parallel; only the copy-up of implied parents waits
                    self.driver.diffs.apply_diff(layer_id, cast(BinaryIO, stream), before_copy_up=self._wait_for(below))
                    self.applied[layer_id].mark(True)
                except Exception as exc:
                    if not self.cancel.is_set():
                        blame_blob(stream.compressed, exc)
                    raise
                stream.verify()
            if self.progress is not None:
                self.progress(layer_id, layer.size, layer.size)

        return job

    def _verify_job(self, index: int, layer: LayerBlob, layer_id: str) -> Callable[[], None]:
        """A layer already stored: only prove the image's blob is intact (cheap: no extraction)."""

        def job() -> None:
            with self.source.open(layer.name) as blob:
                on_read = self._on_read(layer_id, layer.size)
                if layer.digest is not None:
                    HashingReader(blob, layer.digest, what=self._what(index, layer), on_read=on_read).verify()
                else:  # legacy docker save: the diffID is the only digest there is
                    open_layer_stream(
                        blob, blob_digest=None, diff_id=layer.diff_id, what=self._what(index, layer), on_read=on_read
                    ).verify()
            if self.progress is not None:
                self.progress(layer_id, layer.size, layer.size)

        return job

    def _run_jobs(self, jobs: list[tuple[Callable[[], None], _Applied | None]]) -> None:
        workers = self.workers or _default_workers(len(jobs))
        first_error: list[BaseException] = []
        lock = threading.Lock()

        def guarded(job: Callable[[], None], applied: _Applied | None) -> None:
            try:
                job()
            except BaseException as exc:
                with lock:
                    if not first_error and not self.cancel.is_set():
                        first_error.append(exc)
                self.cancel.set()
                raise
            finally:
                # after the error is recorded: a layer above that gives up is not the cause
                if applied is not None:
                    applied.mark(False)  # no-op if the job already marked it applied

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aufs-import")
        futures: list[Future[None]] = []
        try:
            futures = [pool.submit(guarded, job, applied) for job, applied in jobs]
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:
            self.cancel.set()  # ^C while waiting
            raise
        finally:
            # On an error or ^C: stop the other layers at their next read, then wait for them,
            # since a layer cannot be removed while a worker still writes into it.
            if first_error:
                self.cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
        if first_error:
            raise first_error[0]
        for future in futures:
            exc = future.exception()
            if exc is not None:  # pragma: no cover - guarded() records every failure
                raise exc


