# Two commands for a fresh machine:  `make app` starts the explorer, `make test` runs the whole test suite.
# `make app PORT=8502` serves the explorer on another port (default 8501, Streamlit's).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PORT ?= 8501

.PHONY: install chromium app test screenshots bench

install:
	$(PIP) install -q -e ".[app,test]"

# Debian's chromium for the browser tests (Playwright cannot download its own browser here). Installed with
# apt-get only when running as root on Debian (CI); otherwise the browser tests are skipped with a message that
# says what to install. Under CI=true a missing browser fails the tests instead.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get update -q && apt-get install -y -q chromium; \
	else echo "note: /usr/bin/chromium is missing and this is not root on Debian: the browser tests will be skipped" \
	     "(install Debian's chromium to run them)"; fi

app: install
	$(PYTHON) -m streamlit run app/serve.py --server.port $(PORT)

test: install chromium
	$(PYTHON) -m pytest -q

# Regenerates the README's pictures in docs/: the Explore and lecture screenshots and Figure 1, channel means and parts (the tests
# themselves write screenshots only to temporary folders).
screenshots: install chromium
	RESATTN_SCREENSHOTS=docs $(PYTHON) -m pytest -q tests/test_browser.py tests/test_browser_lecture.py
	$(PYTHON) scripts/figure1.py --gallery china --out docs/figure1.png
	$(PYTHON) scripts/figure1.py --gallery china --parts --out docs/figure1-parts.png

bench: install
	$(PYTHON) scripts/bench_train.py
	$(PYTHON) scripts/bench_app.py
