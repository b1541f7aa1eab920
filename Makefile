# make demo: set up, then run the default experiment (Fashion-MNIST, ~7 min on 2 CPU cores with the set-up).
# make test: set up, then run the fast test suite.
# make notebooks: execute the notebooks in notebooks/ in full, outputs into the .ipynb files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
REFERENCES := $(VENV)/references
TORCHVISION_VERSION := 0.28.0
REFERENCES_STAMP := $(REFERENCES)/.installed-torchvision-$(TORCHVISION_VERSION)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup data demo test test-all table notebooks clean

setup: $(STAMP) $(REFERENCES_STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "pqdjax needs Python 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# torchvision's own models, the tests' outside reference (tests/references.py), in a folder of their own rather than
# site-packages: its compiled operators do not load beside torch's CPU build, and transformers imports torchvision
# wherever Python finds it. 0.28.0 is the release made for torch 2.13.0 (the test extra's).
$(REFERENCES_STAMP): $(STAMP)
	rm -rf $(REFERENCES)
	$(BIN)/pip install --quiet --no-deps --target $(REFERENCES) torchvision==$(TORCHVISION_VERSION)
	touch $(REFERENCES_STAMP)

# The embedded dataset, from Debian's dataset-fashion-mnist (skipped where apt is absent:
# the code then tries tfds, or --config.data.data_dir / $$PQDJAX_FASHION_MNIST_DIR).
data:
	@if [ ! -f $(FASHION_MNIST) ] && command -v apt-get >/dev/null; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; fi

demo: setup data
	$(BIN)/python -m pqdjax.main --config=configs/default.py --workdir=runs/default

table: setup data
	$(BIN)/python -m pqdjax.main --config=configs/default.py:table --workdir=runs/table

# Two pytest-xdist workers, each test file on one worker (its module fixtures built once).
test: setup data
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-all: setup data
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m ''

# Executes every notebook in full and writes its outputs (plots included) to the paired .ipynb.
notebooks: setup data
	$(BIN)/python notebooks/execute.py

clean:
	rm -rf $(VENV) runs .pytest_cache
