# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both install everything first (scripts/bootstrap is idempotent) into a virtual environment in
# the checkout, and run from it: Debian's own python3 refuses pip installs outside one (PEP 668).
# PYTHON is only the interpreter that creates the venv (any python3 >= 3.9); everything else
# runs with the venv's python, $(VPY).
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench wheels native clean

setup:
	PYTHON="$(PYTHON)" VENV="$(VENV)" ./scripts/bootstrap

demo: setup
	$(VPY) -m aufs demo

# The suite runs in a private mount namespace: no mount can leak to the host.
test: setup
	unshare -m --propagation private $(VPY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	unshare -m --propagation private $(VPY) -m pytest -m "not slow" $(PYTEST_ARGS)

native: setup
	$(VPY) setup.py -q build_ext --inplace

bench: setup
	unshare -m --propagation private $(VPY) bench/run_all.py

wheels:
	./wheels/build.sh

clean:
	rm -rf build dist wheelhouse wheels/out *.egg-info aufs/_native*.so aufs/_native.c .pytest_cache .hypothesis

# --- reliability (issue 6): see RELIABILITY.md -----------------------------------------------
# fuzz-asan: the C code under ASan+UBSan: the mount-table parser (its memory-safety fuzz tests
# and property tests), and the layer-tar writer and tree walker (csrc/extract.c, csrc/walk.c:
# the archive tests, the names of 4,090-4,100 bytes in every position among them, the apply
# fuzzer and the Go archive/tar corpus). A copy of the package with the extension built
# sanitized goes to $(ASAN_DIR); the tests run there with gcc's libasan preloaded (python
# itself is not instrumented) and python allocating with plain malloc, so ASan sees every
# buffer. Any sanitizer report aborts the run (--capture=sys leaves fd 2 alone, so the report
# is printed). FUZZ_PROFILE=ci (what CI runs) explores a fixed set of examples; the default,
# thorough, many more.
ASAN_DIR ?= /tmp/aufs-asan
ASAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
FUZZ_PROFILE ?= thorough
ASAN_TESTS = tests/reliability/test_fuzz_mountinfo.py tests/native/test_mountinfo.py \
	tests/archive tests/reliability/test_fuzz_apply.py

.PHONY: fuzz-asan reliability reliability-long

fuzz-asan: setup
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	cp -r aufs $(ASAN_DIR)/ && rm -f $(ASAN_DIR)/aufs/_native*.so && rm -rf $(ASAN_DIR)/aufs/__pycache__
	AUFS_NATIVE_CFLAGS="$(ASAN_FLAGS)" AUFS_NATIVE_LDFLAGS="-fsanitize=address,undefined" \
		$(VPY) setup.py -q build_ext -b $(ASAN_DIR) -t $(ASAN_DIR)/build
	cd $(ASAN_DIR) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		PYTHONMALLOC=malloc AUFS_EXPECT_SANITIZERS=1 HYPOTHESIS_PROFILE=$(FUZZ_PROFILE) \
		unshare -m --propagation private $(abspath $(VPY)) -m pytest -q -p no:cacheprovider --capture=sys \
		--benchmark-disable --rootdir=$(CURDIR) --import-mode=importlib \
		$(addprefix $(CURDIR)/,$(ASAN_TESTS)) $(PYTEST_ARGS)

# reliability: the fast reliability suite (also part of `make test`).
reliability: setup
	unshare -m --propagation private $(VPY) -m pytest -q $(PYTEST_ARGS) tests/reliability

# reliability-long: the long runs behind the figures in RELIABILITY.md (about 10 minutes;
# each tool enters a private mount namespace and works on its own tmpfs).
reliability-long: setup
	$(VPY) tools/crashloop.py --all --random 300
	$(VPY) tools/crashloop.py --points 500 --double --seed 3
	$(VPY) tools/crashloop.py --points 300 --backend fuse-overlayfs --seed 2
	$(VPY) tools/fuzz_apply.py --cases 20000 --seed 1
	$(VPY) tools/stress.py --rounds 10
