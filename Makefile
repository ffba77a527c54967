# The README's two commands: `make demo` and `make test`. Both do all set-up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
GCS    := $(BIN)/gdb-cudashim

.PHONY: setup system-deps venv bytecode stack shim programs real-programs real-programs-deps demo test bench stress clean

setup: venv bytecode stack shim programs

system-deps:
	@./.ci/system-deps

# gdb-wheel.txt first: the gdb-for-pwndbg wheel checked against its pinned sha256 (pyproject.toml
# then finds it installed); make test runs the in-gdb tests in its gdb 18 and in the system gdb
$(STAMP): pyproject.toml gdb-wheel.txt | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r gdb-wheel.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
	@# the wheel's launcher links libpython into the venv on its first start: done here, once, and seen to work
	@if [ -x $(BIN)/gdb ]; then $(BIN)/gdb -nx -q -batch -ex 'python import gdb_cudashim, tabulate' >/dev/null || \
	    echo "warning: the gdb-for-pwndbg wheel's gdb does not start in this Python (it needs a shared libpython); the system gdb is used" >&2; fi
	@touch $@

venv: $(STAMP)

# gdb imports the extension on every start: compiled once here, not on each load
# (PYTHONDONTWRITEBYTECODE environments never cache it otherwise).
bytecode: venv
	@$(BIN)/python -m compileall -q gdb_cudashim >/dev/null

stack: venv
	@$(GCS) stack fetch >/dev/null

shim: stack
	@$(MAKE) -s -C shim CUDA_INCLUDE="$$($(GCS) stack path include)"

programs: build/libvgpu.so build/probe build/discover build/spawner build/dlsym_oracle build/forward_check build/unload build/static_child build/threaded_init build/looper build/sigwaiter build/forkn build/rt_probe build/threaded_looper build/dlsym_semantics

# the test interposer (HAMi-core's shape: LD_PRELOADed under its own soname, hooks dlsym, cu* and nvml*)
build/libvgpu.so: tests/programs/lib/interposer.c | system-deps
	@mkdir -p build
	cc -g -O0 -fPIC -shared -Wno-nonnull-compare -Wl,-soname,libvgpu.so -o $@ $< -ldl

# a program with no shared libraries at all: what a child may exec
build/static_child: tests/programs/static_child.c | system-deps
	@mkdir -p build
	cc -g -O0 -Wall -static -o $@ $<

build/%: tests/programs/%.c | system-deps
	@mkdir -p build
	cc -g -O0 -Wall -o $@ $< -ldl -lpthread

# Real third-party programs (gdb_cudashim/realprogs.py): llama.cpp's llama-server and llama-cli
# built once from a pinned sdist (~6 min on 2 cores), the cyllama-cuda12 CUDA backend, a small
# real model; cached next to the CUDA stack, so later runs take seconds. Plus our ollama-shaped
# Go server (cgo), built here.
real-programs-deps:
	@./.ci/system-deps --real-programs

build/goserver: tests/programs/goserver/main.go tests/programs/goserver/go.mod | real-programs-deps
	@mkdir -p build
	cd tests/programs/goserver && CGO_ENABLED=1 GOFLAGS=-buildvcs=false go build -o $(CURDIR)/build/goserver .

real-programs: stack build/goserver | real-programs-deps
	@$(BIN)/python -m gdb_cudashim.realprogs fetch >/dev/null

# The seeds' case: the real cudart and libggml-cuda under the write-ups' shim
# (no cuGetProcAddress_v2, no cuGetExportTable), diagnosed in one command.
# Exit status 1 from gdb-cudashim means "failure caught and diagnosed": expected here.
SEED := $(CURDIR)/shim/build/variants/seed
demo: setup
	@echo "== gdb-cudashim run -- build/probe   (seed-style shim; real libcudart 12.9 + libggml-cuda)"
	@LD_LIBRARY_PATH=$(SEED) GGML_CUDA_LIB="$$($(GCS) stack path ggml-cuda)" $(GCS) run -- build/probe; \
	    rc=$$?; echo "(gdb-cudashim run exit status $$rc: 1 = CUDA init failure caught and diagnosed)"; test $$rc -eq 1
	@echo
	@echo "== gdb-cudashim audit --shim shim/build/variants/seed/libcuda.so.1   (the same answer from the files alone)"
	@LD_LIBRARY_PATH=$(SEED) $(GCS) audit --shim $(SEED)/libcuda.so.1; \
	    rc=$$?; echo "(gdb-cudashim audit exit status $$rc: 1 = problems found)"; test $$rc -eq 1
	@echo
	@echo "== past init: a fake libcudart.so.12 preloaded (shim/fakert.c) makes ggml print 'compute capability 0.0, VRAM: 0 MiB'"
	@LD_PRELOAD=$(CURDIR)/shim/build/variants/fakert/libcudart.so.12 LD_LIBRARY_PATH=$(SEED) \
	    GGML_CUDA_LIB="$$($(GCS) stack path ggml-cuda)" $(GCS) run -- build/probe; \
	    rc=$$?; echo "(gdb-cudashim run exit status $$rc: 1 = an unusable device reported and diagnosed)"; test $$rc -eq 1

test: setup real-programs
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: setup real-programs
	@./.ci/system-deps --bench
	$(BIN)/python bench/bench.py

# every multi-process case 50 times under gdb-cudashim run: zero hangs, nothing left behind
stress: setup build/goserver
	$(BIN)/python bench/stress.py

clean:
	rm -rf build shim/build
