"""Image records (issue 9, item 17): an imported image keeps its config, platform, history and
names; export writes them back (plus stamped entries for new layers); ``aufs images`` /
``aufs rmi``; records stay crash-safe and honest about removed layers.

The images come from umoci (an arm64 config on this amd64 machine, with env, cmd, labels and
history as umoci writes them), and the exports are read back by ``umoci stat`` and
``skopeo inspect``, as a user would.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import aufs
from aufs.cli import main

from .helpers import have, layer_tar, run, write_layout

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\Z")


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("umoci", "skopeo"):
        if not have(tool):
            pytest.skip(f"{tool} is not installed (scripts/bootstrap installs it)")


def build_arm64_image(work: Path, tag: str = "t", env: str = "FOO=bar") -> Path:
    """An arm64 image made by umoci: env, cmd, working dir, a label, two layers, an
    ``empty_layer`` history entry; every history entry stamped by umoci."""
    layout = work / "arm64"
    bundle = work / f"bundle-{tag}"
    if not layout.exists():
        run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:{tag}")
    run("umoci", "config", "--image", f"{layout}:{tag}", "--architecture=arm64", "--os=linux",
        f"--config.env={env}", "--config.cmd=/bin/app", "--config.cmd=--serve",
        "--config.workingdir=/srv", "--config.label=org.example.kind=test")
    run("umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle))
    app = bundle / "rootfs" / "opt" / "app"
    app.mkdir(parents=True)
    (app / "hello").write_text("hello from arm64\n")
    # (umoci 0.4.7's `insert` writes truncated layer tars: repack is its reliable way)
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", str(bundle))
    (app / "more").write_text(env + "\n")
    run("umoci", "repack", "--refresh-bundle", "--history.created_by=second layer",
        "--image", f"{layout}:{tag}", str(bundle))
    return layout


def oci_config(layout: Path, ref: str = "latest") -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """(config, its exact bytes, index.json entry) of the image named ``ref`` in a layout."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
    manifest = json.loads((layout / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())
    data = (layout / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes()
    return json.loads(data), data, entry


def umoci_history(layout: Path, ref: str = "latest") -> list[dict[str, Any]]:
    """``umoci stat``: it refuses (panics, in 0.4.7) on history entries without ``created``."""
    return json.loads(run("umoci", "stat", "--json", "--image", f"{layout}:{ref}").stdout)["history"]


@pytest.fixture
def arm64(ramdir: Path) -> Path:
    return build_arm64_image(ramdir / "build")


def test_an_arm64_image_exports_as_arm64_with_its_own_config(
    driver: aufs.Driver, ramdir: Path, arm64: Path
) -> None:
    original, _, _ = oci_config(arm64, "t")
    ids = aufs.import_image(driver, arm64, platform="linux/arm64")

    [image] = aufs.list_images(driver)
    assert image.refs == ("t",) and image.platform == "linux/arm64"
    assert image.layers == tuple(ids) and image.top == ids[-1] and image.missing_layers == ()
    assert image.config_json == original

    dest = ramdir / "out"
    digest = aufs.export_image(driver, "t", dest)  # by the image's name
    config, _, entry = oci_config(dest)
    assert config["architecture"] == "arm64" and config["os"] == "linux"
    assert entry["platform"] == {"architecture": "arm64", "os": "linux"}
    for key in ("Env", "Cmd", "WorkingDir", "Labels"):
        assert config["config"][key] == original["config"][key], key
    assert config["history"] == original["history"]  # as umoci wrote them, empty_layer entry too
    assert len(config["rootfs"]["diff_ids"]) == 2

    history = umoci_history(dest)
    assert [h["created_by"] for h in history][::2] == ["umoci config", "second layer"]
    inspect = json.loads(run("skopeo", "inspect", f"oci:{dest}:latest").stdout)
    assert inspect["Digest"] == digest
    assert inspect["Architecture"] == "arm64" and inspect["Os"] == "linux"
    assert "FOO=bar" in inspect["Env"] and len(inspect["Layers"]) == 2
    # the same image by its top layer id: the same export
    assert aufs.export_image(driver, ids[-1], ramdir / "by-layer") == digest


def test_a_new_top_layer_adds_one_stamped_history_entry(driver: aufs.Driver, ramdir: Path, arm64: Path) -> None:
    original, _, _ = oci_config(arm64, "t")
    ids = aufs.import_image(driver, arm64, platform="linux/arm64")
    driver.create("app", ids[-1])
    with driver.mount("app") as root:
        Path(root, "srv").mkdir(exist_ok=True)
        Path(root, "srv", "state").write_text("written in the container\n")

    dest = ramdir / "out"
    digest = aufs.export_image(driver, "app", dest, compression="gzip", ref="next")
    config, config_bytes, _ = oci_config(dest, "next")
    assert config["architecture"] == "arm64" and config["config"]["Env"] == original["config"]["Env"]
    assert config["history"][:-1] == original["history"]
    new = config["history"][-1]
    assert RFC3339_UTC.match(new["created"]) and "app" in new["created_by"]
    assert config["created"] == new["created"]
    assert len(config["rootfs"]["diff_ids"]) == 3
    assert all("created" in h for h in umoci_history(dest, "next"))
    assert json.loads(run("skopeo", "inspect", f"oci:{dest}:next").stdout)["Digest"] == digest

    # read back: every digest verifies, and the new store records the exported config exactly
    other = aufs.Driver(ramdir / "other")
    try:
        back = aufs.import_image(other, dest, platform="linux/arm64")
        assert len(back) == 3
        [record] = aufs.list_images(other)
        assert record.config == config_bytes and record.platform == "linux/arm64" and record.refs == ("next",)
        with other.mount(back[-1]) as root:
            assert Path(root, "srv", "state").read_text() == "written in the container\n"
            assert Path(root, "opt", "app", "hello").read_text() == "hello from arm64\n"
        # export -> import -> export gives the same image, byte for byte
        assert aufs.export_image(other, "next", ramdir / "again", compression="gzip", ref="next") == digest
    finally:
        other.cleanup()


def test_a_chain_without_an_image_gets_stamps_that_umoci_reads(driver: aufs.Driver, ramdir: Path) -> None:
    driver.create("base")
    driver.apply_diff("base", layer_tar([("etc", None), ("etc/motd", b"hi")]))
    driver.create("top", "base")
    dest = ramdir / "out"
    digest = aufs.export_image(driver, "top", dest)
    config, _, _ = oci_config(dest)
    assert len(config["history"]) == 2
    assert all(RFC3339_UTC.match(h["created"]) and h["created_by"] for h in config["history"])
    assert config["created"] == max(h["created"] for h in config["history"])
    assert len(umoci_history(dest)) == 2  # umoci 0.4.7 panicked here before
    # deterministic while the chain does not change; a fixed time can be given
    assert aufs.export_image(driver, "top", ramdir / "again") == digest
    aufs.export_image(driver, "top", ramdir / "fixed", created="2024-05-01T12:00:00+02:00")
    assert {h["created"] for h in oci_config(ramdir / "fixed")[0]["history"]} == {"2024-05-01T10:00:00Z"}


def test_an_image_without_history_gets_entries_for_every_layer(driver: aufs.Driver, ramdir: Path) -> None:
    write_layout(ramdir / "img", [layer_tar([("a", b"a")]), layer_tar([("b", b"b")])], arch="arm64", ref="plain")
    ids = aufs.import_image(driver, ramdir / "img")
    driver.create("rw", ids[-1])
    aufs.export_image(driver, "rw", ramdir / "out", created="2025-01-02T03:04:05Z")
    config, _, _ = oci_config(ramdir / "out")
    assert config["architecture"] == "arm64"
    assert len(config["history"]) == 3 == len(config["rootfs"]["diff_ids"])
    assert all(RFC3339_UTC.match(h["created"]) for h in config["history"])
    assert config["history"][-1]["created"] == "2025-01-02T03:04:05Z"
    assert len(umoci_history(ramdir / "out")) == 3


def test_reimport_adds_names_and_a_name_moves_like_docker_load(driver: aufs.Driver, ramdir: Path, arm64: Path) -> None:
    ids = aufs.import_image(driver, arm64, platform="linux/arm64")
    docker = ramdir / "app.tar"
    run("skopeo", "copy", "-q", f"oci:{arm64}:t", f"docker-archive:{docker}:example/app:1")
    assert aufs.import_image(driver, docker) == ids
    [image] = aufs.list_images(driver)
    assert image.refs == ("t", "docker.io/example/app:1")  # skopeo keeps the config: the same image id
    assert aufs.find_image(driver, "example/app:1") == image
    assert aufs.find_image(driver, "docker.io/example/app:1") == image
    assert aufs.find_image(driver, image.id[:14]) == image  # "sha256:" + a prefix

    other = build_arm64_image(ramdir / "build", tag="t2", env="FOO=other")
    run("skopeo", "copy", "-q", f"oci:{other}:t2", f"oci:{ramdir / 'renamed'}:t")  # another image named "t"
    aufs.import_image(driver, ramdir / "renamed", platform="linux/arm64")
    names = {i.id: i.refs for i in aufs.list_images(driver)}
    assert names[image.id] == ("docker.io/example/app:1",)
    assert len(names) == 2 and ("t",) in names.values()
    with pytest.raises(aufs.ImageNotFound):
        aufs.find_image(driver, "nope:1")


def aufs_cli(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--home", str(home), *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_images_rmi_and_export_by_name(ramdir: Path, arm64: Path) -> None:
    home = ramdir / "home"
    try:
        code, _, err = aufs_cli(home, "images")
        assert code == 3 and "no aufs store" in err  # like `aufs ls`: a missing store is not made by reading
        aufs_cli(home, "create", "scratch")
        assert aufs_cli(home, "images")[1].strip() == "(no images)"
        assert aufs_cli(home, "rm", "scratch")[0] == 0
        code, out, err = aufs_cli(home, "--json", "import", str(arm64), "--platform", "linux/arm64")
        assert code == 0, err
        layers = json.loads(out)["layers"]
        code, out, _ = aufs_cli(home, "images")
        header, row = out.splitlines()
        assert header.split()[:3] == ["NAME", "IMAGE", "ID"]
        assert row.split()[0] == "t" and "linux/arm64" in row and layers[-1][:12] in row
        [data] = json.loads(aufs_cli(home, "--json", "images")[1])
        assert data["refs"] == ["t"] and data["layers"] == layers and data["platform"] == "linux/arm64"
        assert data["missing_layers"] == [] and RFC3339_UTC.match(data["created"])

        code, out, err = aufs_cli(home, "export", "t", str(ramdir / "out"))
        assert code == 0, err
        assert json.loads(run("skopeo", "inspect", f"oci:{ramdir / 'out'}:latest").stdout)["Architecture"] == "arm64"

        code, _, err = aufs_cli(home, "rmi", "nope")
        assert code == 3 and "nope" in err
        code, _, err = aufs_cli(home, "export", "nope", str(ramdir / "out2"))
        assert code == 3 and "no layer or image" in err

        code, out, err = aufs_cli(home, "--json", "rmi", "t")
        assert code == 0, err
        [done] = json.loads(out)
        assert done["deleted"] is True and done["untagged"] == ["t"]
        assert done["removed_layers"] == layers[::-1] and done["kept_layers"] == []
        assert json.loads(aufs_cli(home, "--json", "images")[1]) == []
        assert json.loads(aufs_cli(home, "--json", "ls")[1]) == []
    finally:
        main(["--home", str(home), "cleanup"], stdout=io.StringIO(), stderr=io.StringIO())


def test_rmi_keeps_layers_that_are_mounted_have_children_or_are_shared(
    driver: aufs.Driver, ramdir: Path, arm64: Path
) -> None:
    ids = aufs.import_image(driver, arm64, platform="linux/arm64")
    # a second image with the same layers (another config)
    run("skopeo", "copy", "-q", f"oci:{arm64}:t", f"oci:{ramdir / 'copy'}:t")
    run("umoci", "config", "--image", f"{ramdir / 'copy'}:t", "--config.env=OTHER=1", "--tag", "other")
    aufs.import_image(driver, ramdir / "copy", ref="other", platform="linux/arm64")
    assert len(aufs.list_images(driver)) == 2

    # a container's layer over the image: rmi keeps the image's layers and says why
    driver.create("container", ids[-1])
    done = aufs.remove_image(driver, "other")
    assert done.deleted and done.removed_layers == ()
    assert done.kept_layers[0] == (ids[-1], "used by image t")
    done = aufs.remove_image(driver, "t")
    assert done.deleted and done.removed_layers == ()
    assert done.kept_layers[0][0] == ids[-1] and "parent of layer container" in done.kept_layers[0][1]
    assert [k[0] for k in done.kept_layers] == ids[::-1]
    assert sorted(driver.layers()) == sorted([*ids, "container"])

    # mounted: kept, and the text the CLI prints says so
    driver.remove("container")
    aufs.import_image(driver, arm64, platform="linux/arm64")
    driver.get(ids[-1])
    try:
        code, out, err = aufs_cli(driver.home, "rmi", "t")
        assert code == 0, err
        assert f"kept layer: {ids[-1]}: mounted" in out and "deleted: sha256:" in out
    finally:
        driver.put(ids[-1])
    assert aufs.list_images(driver) == [] and sorted(driver.layers()) == sorted(ids)


def test_rmi_of_one_of_several_names_only_untags(driver: aufs.Driver, ramdir: Path, arm64: Path) -> None:
    ids = aufs.import_image(driver, arm64, platform="linux/arm64")
    run("skopeo", "copy", "-q", f"oci:{arm64}:t", f"docker-archive:{ramdir / 'a.tar'}:example/app:1")
    aufs.import_image(driver, ramdir / "a.tar")
    done = aufs.remove_image(driver, "t")
    assert done.untagged == ("t",) and not done.deleted
    [image] = aufs.list_images(driver)
    assert image.refs == ("docker.io/example/app:1",)
    done = aufs.remove_image(driver, image.id, keep_layers=True)  # by id: every name, record only
    assert done.deleted and done.untagged == ("docker.io/example/app:1",) and done.removed_layers == ()
    assert sorted(driver.layers()) == sorted(ids)


def test_a_removed_layer_makes_a_dangling_image_that_check_reports(driver: aufs.Driver, ramdir: Path, arm64: Path) -> None:
    ids = aufs.import_image(driver, arm64, platform="linux/arm64")
    driver.remove(ids[-1])
    [image] = aufs.list_images(driver)
    assert image.missing_layers == (ids[-1],)
    with pytest.raises(aufs.LayerNotFound, match="removed"):
        aufs.export_image(driver, "t", ramdir / "out")
    report = driver.check()
    assert [f.kind for f in report.findings] == ["dangling-image"] and not report.ok
    assert driver.check(repair=True).ok
    assert aufs.list_images(driver) == [] and driver.check().clean


_KILL_AT_RECORD = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import aufs
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if "/images/" in str(dst):
        os.kill(os.getpid(), signal.SIGKILL)  # die with the record written but not in place
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
aufs.import_image(aufs.Driver({home!r}), {source!r}, platform="linux/arm64")
"""


def test_a_killed_import_leaves_no_half_record(driver: aufs.Driver, arm64: Path) -> None:
    repo = str(Path(__file__).resolve().parents[2])
    script = _KILL_AT_RECORD.format(repo=repo, home=str(driver.home), source=str(arm64))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == -9, proc.stderr
    assert aufs.list_images(driver) == []
    leftovers = [name for name in os.listdir(driver.layout.images_dir) if name.endswith(".tmp")]
    assert len(leftovers) == 1  # the half-written record, never read as one
    assert [f.kind for f in driver.check().findings] == ["leftover-temporary"]

    # killed in the middle of the layers: neither layers nor record survive
    kill_mid = f"""
import os, sys
sys.path.insert(0, {repo!r})
import aufs
def progress(layer_id, done, total):
    if done == total:
        os._exit(9)
aufs.import_image(aufs.Driver({str(driver.home)!r}), {str(arm64)!r}, platform="linux/arm64", progress=progress, workers=1)
"""
    proc = subprocess.run([sys.executable, "-c", kill_mid], capture_output=True, text=True, check=False)
    assert proc.returncode == 9, proc.stderr
    assert aufs.list_images(driver) == []

    ids = aufs.import_image(driver, arm64, platform="linux/arm64")
    [image] = aufs.list_images(driver)
    assert image.layers == tuple(ids)
    assert not [name for name in os.listdir(driver.layout.images_dir) if name.endswith(".tmp")]
    assert driver.check().clean


def test_two_images_on_one_chain_export_by_name_or_with_image(driver: aufs.Driver, ramdir: Path, arm64: Path) -> None:
    ids = aufs.import_image(driver, arm64, platform="linux/arm64")
    run("umoci", "config", "--image", f"{arm64}:t", "--config.env=OTHER=1", "--tag", "other")
    assert aufs.import_image(driver, arm64, ref="other", platform="linux/arm64") == ids
    driver.create("rw", ids[-1])
    with pytest.raises(aufs.ImageError, match="several images"):
        aufs.export_image(driver, "rw", ramdir / "out")
    assert not (ramdir / "out").exists()
    aufs.export_image(driver, "rw", ramdir / "out", image="other")
    assert "OTHER=1" in oci_config(ramdir / "out")[0]["config"]["Env"]
    aufs.export_image(driver, "other", ramdir / "by-name")  # by name: that image's own layers
    assert len(oci_config(ramdir / "by-name")[0]["rootfs"]["diff_ids"]) == 2
    with pytest.raises(aufs.ImageError, match="not below"):
        driver.create("elsewhere")
        aufs.export_image(driver, "elsewhere", ramdir / "bad", image="t")


def test_images_list_and_export_on_a_read_only_store(ramdir: Path, arm64: Path) -> None:
    home = ramdir / "home"
    store = aufs.Driver(home)
    ids = aufs.import_image(store, arm64, platform="linux/arm64")
    store.cleanup()
    run("mount", "--bind", str(home), str(home))
    try:
        run("mount", "-o", "remount,bind,ro", str(home))
        code, out, err = aufs_cli(home, "--json", "images")
        assert code == 0, err
        assert [i["layers"] for i in json.loads(out)] == [ids]
        code, out, err = aufs_cli(home, "export", "t", str(ramdir / "out"))
        assert code == 0, err
        assert oci_config(ramdir / "out")[0]["architecture"] == "arm64"
        code, _, err = aufs_cli(home, "rmi", "t")
        assert code != 0 and "read-only" in err
    finally:
        run("umount", str(home))
    assert [i.layers for i in aufs.list_images(aufs.Driver(home))] == [tuple(ids)]


def test_parallel_imports_of_one_image_make_one_record(driver: aufs.Driver, ramdir: Path, arm64: Path) -> None:
    import threading

    run("skopeo", "copy", "-q", f"oci:{arm64}:t", f"docker-archive:{ramdir / 'a.tar'}:example/app:1")
    sources = [(arm64, "linux/arm64"), (ramdir / "a.tar", None)] * 3
    results: list[Any] = []

    def one(source: Path, platform: str | None) -> None:
        try:
            results.append(aufs.import_image(aufs.Driver(driver.home), source, platform=platform))
        except BaseException as exc:  # noqa: BLE001
            results.append(exc)

    threads = [threading.Thread(target=one, args=s) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == results[0] for r in results), results
    [image] = aufs.list_images(driver)
    assert sorted(image.refs) == ["docker.io/example/app:1", "t"] and list(image.layers) == results[0]
