"""The on-disk layout of a layer store: every path the store uses is built here, nowhere else.

::

    HOME/
      aufs-store.json        store metadata: layout version and whiteout format (written once)
      .lock                  the store lock (create, remove, cleanup, sweep)
      userns.json            a userns store's namespace holder (aufs.userns); .userns.lock (start,
                             join, stop) and .userns.members (held by each process inside) its locks
      layers/ID/             one committed layer (appears by rename, disappears by rename)
        layer.json           {"parent": ID or null, "ancestors": [parent, its parent, ...]}
        diff/                the layer's own content: what users see as the layer
        work/                overlayfs work dir (same filesystem as diff/, never inside it)
      mnt/ID/                the mountpoint of ID while it is mounted
      state/ID.lock          the per-layer lock file
      state/ID.refs          who holds a reference to ID's mount (see aufs.refcount)
      state/ID.backend       what the backend needs to finish an unmount (fuse daemon pid)
      l/SHORT -> ../layers/ID/diff   short links, keeping long lower lists short (fuse-overlayfs)
      empty/                 an empty directory: the lowest lower of every mount
      tmp/KIND.OWNER.RAND    work in progress (staged creates, removes, applies, lower views)
      image-imports/OWNER.RAND.json  journals of image imports in progress (aufs.image.journal)
      images/HEX.json        one imported image: config, manifest, names, layers (aufs.image.records)
      images/.lock           the image records lock
      snapshotter/           `aufs serve containerd`: snapshots/HASH.json (one per containerd
                             key: its layer, kind, parent, labels), server.lock (the server's)

Layer ids are 1 to 128 characters of ``[A-Za-z0-9_.-]`` starting with a letter or digit, so an
id is always a single, non-hidden path component and can never name a temporary entry.
Temporary names carry their owner (pid and start time) so that opening a store can tell the
debris of a dead process from the work of a live one.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import uuid
from typing import Union

from .errors import InvalidLayerId
from .owners import ProcessToken

__all__ = ["IMPORTS_DIR_NAME", "MAX_ID_LENGTH", "STORE_META_NAME", "Layout", "is_valid_layer_id", "validate_layer_id"]

MAX_ID_LENGTH = 128
STORE_META_NAME = "aufs-store.json"
IMPORTS_DIR_NAME = "image-imports"
IMAGES_DIR_NAME = "images"
SHORT_LINK_LENGTH = 20

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")

PathArg = Union[str, "os.PathLike[str]"]


def is_valid_layer_id(layer_id: object) -> bool:
    """True if ``layer_id`` is a str of 1 to 128 ``[A-Za-z0-9_.-]`` characters, first alphanumeric."""
    return isinstance(layer_id, str) and _ID_RE.match(layer_id) is not None


def validate_layer_id(layer_id: object) -> str:
    """Return ``layer_id`` if it is valid (see :func:`is_valid_layer_id`).

    Raises :class:`aufs.InvalidLayerId` (a ``ValueError`` and a ``LayerNotFound``) otherwise.
    """
    if not is_valid_layer_id(layer_id):
        raise InvalidLayerId(
            f"invalid layer id {layer_id!r}: use 1 to {MAX_ID_LENGTH} characters of "
            "[A-Za-z0-9_.-], the first one a letter or digit",
            layer_id=layer_id if isinstance(layer_id, str) else None,
        )
    assert isinstance(layer_id, str)
    return layer_id


@functools.lru_cache(maxsize=8192)
def _short_name(layer_id: str) -> str:
    # a deep chain asks for hundreds of these per mount; base32 is pure Python and slow
    digest = hashlib.sha256(layer_id.encode("ascii")).digest()
    return base64.b32encode(digest)[:SHORT_LINK_LENGTH].decode("ascii")


class Layout:
    """Paths of one store under ``home``, as str. Pure: builds paths, touches nothing on disk.

    One accessor per on-disk object, and nothing outside this class joins store paths.
    """

    def __init__(self, home: PathArg) -> None:
        self.home = os.path.abspath(os.fspath(home))
        self.meta_file = self.home + "/" + STORE_META_NAME
        self.store_lock = self.home + "/.lock"
        self.userns_record = self.home + "/userns.json"
        """A userns store's namespace holder: pid, start time, namespace (aufs.userns)."""
        self.userns_lock = self.home + "/.userns.lock"
        """Starting, joining and stopping that holder (exclusive)."""
        self.userns_members = self.home + "/.userns.members"
        """Every aufs process in that namespace holds it shared; the last one out stops the holder."""
        self.layers_dir = self.home + "/layers"
        self.mnt_dir = self.home + "/mnt"
        self.state_dir = self.home + "/state"
        self.links_dir = self.home + "/l"
        self.empty_dir = self.home + "/empty"
        self.tmp_dir = self.home + "/tmp"
        self.imports_dir = self.home + "/" + IMPORTS_DIR_NAME
        # created by the first import that records an image, not by opening the store
        self.images_dir = self.home + "/" + IMAGES_DIR_NAME
        self.images_lock = self.images_dir + "/.lock"
        self.snapshotter_dir = self.home + "/snapshotter"
        # hot paths (get of a 500-layer chain) build thousands of paths: plain string
        # concatenation, no pathlib
        self._layers = self.layers_dir + "/"

    def image_record(self, image_hex: str) -> str:
        """``images/HEX.json``: the record of the image whose config has sha256 HEX."""
        return f"{self.images_dir}/{image_hex}.json"

    def directories(self) -> list[str]:
        """The directories a store needs, parents first."""
        return [self.home, self.layers_dir, self.mnt_dir, self.state_dir, self.links_dir, self.empty_dir, self.tmp_dir]

    def layer_dir(self, layer_id: str) -> str:
        """``layers/ID``: everything of one committed layer."""
        return self._layers + layer_id

    def layer_meta(self, layer_id: str) -> str:
        """``layers/ID/layer.json``."""
        return self._layers + layer_id + "/layer.json"

    def diff_dir(self, layer_id: str) -> str:
        """``layers/ID/diff``: the layer's own content."""
        return self._layers + layer_id + "/diff"

    def work_dir(self, layer_id: str) -> str:
        """``layers/ID/work``: the overlayfs work dir of the layer's writable mount."""
        return self._layers + layer_id + "/work"

    def mountpoint(self, layer_id: str) -> str:
        """``mnt/ID``: where ``get`` mounts the layer's union."""
        return self.mnt_dir + "/" + layer_id

    def lock_file(self, layer_id: str) -> str:
        """``state/ID.lock``: the layer lock."""
        return f"{self.state_dir}/{layer_id}.lock"

    def refs_file(self, layer_id: str) -> str:
        """``state/ID.refs``: the layer's reference table."""
        return f"{self.state_dir}/{layer_id}.refs"

    def backend_record(self, layer_id: str) -> str:
        """``state/ID.backend``: what the backend needs to finish an unmount."""
        return f"{self.state_dir}/{layer_id}.backend"

    def short_link(self, layer_id: str) -> str:
        """``l/SHORT``: a fixed-length alias of the layer's diff dir (a hash, so no bookkeeping)."""
        return self.links_dir + "/" + _short_name(layer_id)

    @staticmethod
    def short_link_target(layer_id: str) -> str:
        """What :meth:`short_link` points to, relative so the store can be moved."""
        return f"../layers/{layer_id}/diff"

    @staticmethod
    def short_link_layer(target: str) -> str | None:
        """The layer id a short link's target names, or None if it is not such a target."""
        parts = target.split("/")
        if len(parts) == 4 and parts[:2] == ["..", "layers"] and parts[3] == "diff":
            return parts[2]
        return None

    @staticmethod
    def tmp_sibling(path: str) -> str:
        """``PATH.tmp``: where a file is written before it is renamed over ``path``."""
        return path + ".tmp"

    def temp_path(self, kind: str, owner: ProcessToken, layer_id: str | None = None) -> str:
        """A fresh temporary name ``tmp/KIND.OWNER.RAND[.ID]`` (never a valid layer id's spot)."""
        name = f"{kind}.{owner}.{uuid.uuid4().hex[:12]}"
        if layer_id is not None:
            name += f".{layer_id}"
        return self.tmp_dir + "/" + name

    @staticmethod
    def temp_owner(name: str) -> ProcessToken | None:
        """The owner recorded in a temporary name, or None if the name is not one of ours."""
        parts = name.split(".", 3)
        if len(parts) < 3:
            return None
        return ProcessToken.parse(parts[1])
