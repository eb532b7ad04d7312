# Two commands for a fresh machine:  `make app` starts the explorer, `make test` runs the whole test suite.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install chromium app test bench

install:
	$(PIP) install -q -e ".[app,test]"

chromium:  # Debian's chromium for the browser test (Playwright cannot download its own browser here)
	@test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)

app: install
	$(PYTHON) -m streamlit run app/main.py

test: install chromium
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) scripts/bench_train.py
	$(PYTHON) scripts/bench_app.py
