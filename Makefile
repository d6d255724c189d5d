# drbook: two commands for users (`make reproduce`, `make test`), a few for maintainers.
# Needs only Python >= 3.10 and make; everything else is installed into .venv under constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.drbook-installed
PROFILE ?= sample
WORKERS ?= 2
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0

.PHONY: help install test test-fast reproduce reference book check-sync nbtest pytest readme bench constraints clean

help:
	@echo "make reproduce   run the whole course on data_samples/ (profile $(PROFILE)), compare it with reference/$(PROFILE).json"
	@echo "make reference   RUNS='runs/a runs/b runs/c': write reference/<profile>.json from runs, tolerances from their spread"
	@echo "make test        the full gate: clean notebooks, library in sync, README in sync, nbdev_test, pytest"
	@echo "make test-fast   the inner loop: pytest without the tests marked slow (under 2 minutes)"
	@echo "make book        the course as an HTML book from the latest complete run (RUN=runs/... for another) in _book/"
	@echo "make bench       the benchmarks in bench/: speed, the lessons' figures on an independent synthetic cohort, training over five seeds"

$(STAMP): settings.ini setup.py constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

check-sync: $(STAMP)
	bash tools/check_sync.sh

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers $(WORKERS) --timing

# pytest-xdist: one test file per worker at a time (a file's module fixtures train once); TensorFlow keeps about one core busy.
# Files start in collection order (--no-loadscope-reorder), which tests/conftest.py begins with the minutes-long rehearsals
pytest: $(STAMP)
	$(BIN)/python -m pytest tests -q -p no:cacheprovider -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory check-sync && \
	$(MAKE) --no-print-directory nbtest && \
	$(MAKE) --no-print-directory pytest && \
	echo "make test: gate passed in $$(( $$(date +%s) - start )) s"

test-fast: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/python -m pytest tests -q -p no:cacheprovider -n $(WORKERS) --dist loadfile -m 'not slow' && \
	echo "make test-fast: passed in $$(( $$(date +%s) - start )) s (slow tests and notebooks: make test)"

reproduce: $(STAMP)
	$(BIN)/drbook reproduce --profile $(PROFILE)

reference: $(STAMP)
	@test -n "$(RUNS)" || { echo "make reference RUNS='runs/<profile>-A runs/<profile>-B runs/<profile>-C' (three runs or more measure the tolerances)"; exit 2; }
	$(BIN)/drbook reference --update $(RUNS)

# The book shows a run's executed notebooks (never runs them again); with no complete run, it makes one first.
book: $(STAMP)
	@if [ -z "$(RUN)" ] && ! $(BIN)/python tools/build_book.py --find-run >/dev/null 2>&1; then \
	  echo "make book: no complete run in runs/; running make reproduce first"; \
	  $(MAKE) --no-print-directory reproduce; fi
	$(BIN)/python tools/build_book.py $(RUN)

readme: $(STAMP)
	$(BIN)/python tools/make_readme.py

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/gradcam.py
	$(BIN)/python bench/lessons.py
	$(BIN)/python bench/seeds.py

constraints: $(STAMP)
	( echo "# Exact versions drbook was last tested with (Python 3.11, CPU). Used by the Makefile: pip install -c constraints.txt"; \
	  echo "# Regenerate after an upgrade with: make constraints"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^drbook' ) > constraints.txt

clean:
	rm -rf runs _proc _docs _book .pytest_cache
