# Every target bootstraps .venv when it is missing (or when pyproject.toml changed).
PY := .venv/bin/python
STAMP := .venv/.installed
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: demo test test-fast lint typecheck format bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first: the pinned wheels are local files on this machine.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m vision_sae_lens demo --out demo_out

# pytest exits 5 when a filter selects no test: that is not a failure of the suite.
PYTEST = $(PY) -m pytest -q -n 2 --dist loadfile
test: $(STAMP)
	$(PYTEST) tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The fast lane: everything but the long end-to-end / subprocess / kill tests (@pytest.mark.slow).
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: $(STAMP) typecheck
	$(PY) -m ruff check vision_sae_lens tests scripts
	$(PY) -m ruff format --check vision_sae_lens tests scripts

typecheck: $(STAMP)
	$(PY) -m mypy vision_sae_lens

format: $(STAMP)
	$(PY) -m ruff format vision_sae_lens tests scripts
	$(PY) -m ruff check --fix vision_sae_lens tests scripts

bench: $(STAMP)
	for f in scripts/bench/*.py; do $(PY) $$f || exit 1; done

clean-venv:
	rm -rf .venv
