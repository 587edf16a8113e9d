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


def _module_imports() -> dict:
    """Each aufs module -> the aufs modules it imports at module level (TYPE_CHECKING aside)."""
    import ast
    import pathlib

    root = pathlib.Path(aufs.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    graph = {}
    for name, (path, is_package) in modules.items():
        package = name.split(".") if is_package else name.split(".")[:-1]
        deps = set()
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; TYPE_CHECKING blocks are ast.If, skipped
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    deps.add(full if full in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def test_no_import_cycles() -> None:
    graph = _module_imports()
    state: dict = {}

    def visit(module: str, trail: list) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package's __init__ importing its own submodules is no cycle: the submodules never
    # import the package back
    assert "aufs.store" not in graph["aufs.core"] | graph["aufs.check"] | graph["aufs.diffs"]


def test_no_function_level_imports_of_the_package() -> None:
    """A function-level import of an aufs module hides a dependency (and could hide a cycle);
    only the CLI imports lazily, to start fast."""
    import ast
    import pathlib

    root = pathlib.Path(aufs.__file__).parent
    hidden = []
    for path in sorted(root.rglob("*.py")):
        if path.name in ("cli.py",):
            continue
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        guarded = {id(n) for stmt in tree.body if isinstance(stmt, ast.If) for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and id(node) not in top | guarded:
                hidden.append(f"{path.relative_to(root)}:{node.lineno}")
    assert hidden == []
