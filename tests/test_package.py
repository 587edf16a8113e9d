"""The package imports, exposes its public names and keeps its error hierarchy."""
import aufs


def test_error_hierarchy_maps_to_builtins() -> None:
    assert issubclass(aufs.LayerNotFound, LookupError)
    assert issubclass(aufs.LayerExists, FileExistsError)
    assert issubclass(aufs.UnsafeArchive, aufs.ArchiveError)
    assert issubclass(aufs.DigestMismatch, aufs.AufsError)
    for name in aufs.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(aufs, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, aufs.AufsError), name


def test_errors_carry_layer_and_path() -> None:
    err = aufs.LayerNotFound("layer 'x' does not exist", layer_id="x", path="/s/layers/x")
    assert err.layer_id == "x" and err.path == "/s/layers/x"
    assert str(err) == "layer 'x' does not exist"
