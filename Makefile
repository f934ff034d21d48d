# Set-up and entry points. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench clean

venv: $(STAMP)

# One line per step, and pip's own output (its download progress on a terminal): the first install takes minutes.
$(STAMP): pyproject.toml
	@echo "== 1/3: virtual environment $(VENV) and an up-to-date pip"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "== 2/3: PyTorch ($(TORCH)), unless one is installed: the largest download"
	# Install the CPU wheel first: an unpinned torch would pull GBs of CUDA packages.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH)
	@echo "== 3/3: geo-sat2map and its dependencies (rasterio with GDAL, shapely, pyproj, ...)"
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)
	@echo "== installed: $(VENV)"

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) examples/demo.py --out demo

bench: $(STAMP)
	$(PY) benchmarks/translate_bench.py

clean:
	rm -rf $(VENV) demo .pytest_cache
