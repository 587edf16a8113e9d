# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both install everything first (scripts/bootstrap is idempotent).
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench wheels native clean

setup:
	./scripts/bootstrap

demo: setup
	$(PYTHON) -m aufs demo

# The suite runs in a private mount namespace: no mount can leak to the host.
test: setup
	unshare -m --propagation private $(PYTHON) -m pytest $(PYTEST_ARGS)

test-fast: setup
	unshare -m --propagation private $(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS)

native:
	$(PYTHON) setup.py -q build_ext --inplace

bench: setup
	unshare -m --propagation private $(PYTHON) bench/run_all.py

wheels:
	./wheels/build.sh

clean:
	rm -rf build dist wheelhouse wheels/out *.egg-info aufs/_native*.so aufs/_native.c .pytest_cache .hypothesis
