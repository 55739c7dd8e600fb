# The workbook's commands. Each creates .venv on first use (pinned versions) and reuses it afterwards.
#   make workbook   run every notebook headless into build/ (+ HTML) and print a summary table
#   make test       ruff, unit tests of course_utils + strict `pytest --nbval` on the notebooks (CI runs this)
#   make lint       ruff check + ruff format --check (pyproject.toml [tool.ruff])
#   make notebooks  re-execute the notebooks in place so their committed outputs are fresh
#   make lab        JupyterLab on the project
#   make slides     build the Marp decks into build/slides/
#   make mutations  break each lesson's code and check its notebook fails (every checkpoint can fail)
#   make test-gpu   every notebook on a CUDA GPU with a real model (GPU runners; see scripts/test_gpu.py)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# DeepSpeed on the CPU accelerator unless the machine has an NVIDIA GPU (then DeepSpeed picks CUDA itself)
ifeq ($(shell command -v nvidia-smi 2>/dev/null),)
export DS_ACCELERATOR := cpu
endif
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Unattended runs (runner, nbval, tests) show no progress bars; a person running a notebook in Lab sees them.
export WORKBOOK_HEADLESS := 1

NBVAL_FLAGS := --nbval --nbval-current-env --nbval-cell-timeout=600 --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:randomly

.PHONY: venv workbook test lint unit unit-fast nbval portability mutations notebooks lab slides check-slides clean test-gpu

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" > /dev/null
	touch $(STAMP)

workbook: $(STAMP)
	WORKBOOK_FIGURES_DIR=$(CURDIR)/build/figures $(PY) scripts/run_notebooks.py --out build

notebooks: $(STAMP)
	WORKBOOK_FIGURES_DIR=$(CURDIR)/slides/figures $(PY) scripts/run_notebooks.py --inplace --record-times --out build/inplace

unit: $(STAMP)
	$(PY) -m pytest tests -q

unit-fast: $(STAMP)
	$(PY) -m pytest tests -q -m "not slow"

test-gpu: $(STAMP)
	$(PY) scripts/test_gpu.py

nbval: $(STAMP)
	env -u MPLBACKEND WORKBOOK_FIGURES_DIR=$(CURDIR)/build/nbval_figures $(PY) -m pytest $(NBVAL_FLAGS) notebooks/ -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "nbval: no notebooks collected"; rc=0; fi; exit $$rc

test: lint unit nbval

# ruff on the package, the scripts and the tests: lint rules and formatting (configured in pyproject.toml; the
# notebooks are lessons, checked by nbval; their lesson-code cells match the formatted package, tests/test_lesson_code.py)
lint: $(STAMP)
	$(PY) -m ruff check course_utils scripts tests
	$(PY) -m ruff format --check course_utils scripts tests

# Strict nbval with torch forced onto other CPU kernels and one thread: stored outputs must not depend on the CPU.
PORTABILITY_SETTINGS := "ATEN_CPU_CAPABILITY=default" \
	"ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2" \
	"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1"
portability: $(STAMP)
	@for setting in $(PORTABILITY_SETTINGS); do echo "== nbval with $$setting"; env $$setting $(MAKE) --no-print-directory nbval || exit 1; done

# Break the code each notebook teaches (one line of course_utils) and check that the notebook then fails.
mutations: $(STAMP)
	$(PY) scripts/mutation_check.py

# As root (AutoDL, containers) Jupyter refuses to start without --allow-root.
lab: $(STAMP)
	env -u WORKBOOK_HEADLESS $(VENV)/bin/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root,)

slides: $(STAMP)
	$(PY) scripts/build_slides.py

clean:
	rm -rf build .pytest_cache

check-slides: slides
	$(PY) scripts/check_slides.py
