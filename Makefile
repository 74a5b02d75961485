# Two commands on a fresh clone: `make demo` and `make test`. Both need only Python 3.11+ and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP  := $(VENV)/.bnnkit-installed

# Hub downloads cannot work here: fail fast instead of retrying for ~46 s.
export HF_HUB_OFFLINE := 1

.PHONY: demo test test-fast test-all gpu-check lint venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/bnnkit data synth data/synth --seed 0 --exist-ok
	$(BIN)/bnnkit train recipes/quickstart.toml
	$(BIN)/bnnkit evaluate --ood midjourney
	@echo "midjourney* was held out: compare its accuracy with 'all seen' (the drop on an unseen"
	@echo "generator); under 'scores', which score flags its fakes (OOD AUROC) and how many of its"
	@echo "errors each score's threshold catches; under 'abstention', what the default one does."

# `make test` is the full suite (what .ci/run calls; it fits CI's 15 minutes on 2 cores).
# `make test-fast` skips the tests marked slow (torchrun, kill/resume, benchmark script,
# example plugin) for quick iteration. `make test-all` is an alias of `make test`.
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-all: test

# `make gpu-check`: the tests marked gpu, benchmarks/run.py --device cuda and a fine-tune
# throughput figure, under 8 minutes, as ONE JSON object on stdout. Without a CUDA GPU (CI) it
# prints {"gpu": false, "status": "no GPU: skipped", ...} and exits 0. See benchmarks/README.md.
gpu-check: $(STAMP)
	@$(BIN)/python benchmarks/gpu_check.py

lint: $(STAMP)
	$(BIN)/ruff check bnnkit plugins tests benchmarks examples docs
	$(BIN)/ruff format --check bnnkit plugins tests benchmarks examples docs

clean:
	rm -rf $(VENV) runs data/synth .bnnkit-cache .pytest_cache
