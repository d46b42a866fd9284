# Two commands do all set-up on a fresh Debian machine (Python 3.11, node 20, root):
#   make demo   - run the gateway in front of the bundled demo back end
#   make test   - install everything the tests need, run ruff and mypy, then the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test test-floor venv system-deps lint docs bench clean soak

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# An editable install does not expose twisted/plugins/ to twistd: link the plugin
# into a directory of the venv and put that on the venv's path, so that `twistd
# idgateway` finds it and Twisted writes its dropin.cache there, not in the checkout.
$(VENV)/plugin/twisted/plugins/idgateway_plugin.py: $(VENV)/.installed
	mkdir -p $(@D)
	ln -sf $(CURDIR)/twisted/plugins/idgateway_plugin.py $@
	$(BIN)/python -c 'import site, os; open(os.path.join(site.getsitepackages()[0], "idgateway-checkout.pth"), "w").write(os.path.abspath("$(VENV)/plugin") + "\n")'

venv: $(VENV)/.installed $(VENV)/plugin/twisted/plugins/idgateway_plugin.py

# The oldest Twisted setup.py accepts: the unit tests also run on it, so that
# the floor stated there stays true (it is read from setup.py).
TWISTED_FLOOR = $(shell sed -n 's/.*"twisted\[tls\]>=\([0-9.]*\),.*/\1/p' setup.py)
FLOOR_VENV ?= .venv-floor

$(FLOOR_VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install --quiet -e '.[test]' 'twisted[tls]==$(TWISTED_FLOOR)'
	touch $@

test-floor: system-deps $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/unit

system-deps:
	scripts/install-system-deps

demo: venv
	$(BIN)/python scripts/demo.py

test: system-deps venv lint docs test-floor
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not soak" tests

# The 70 s soak test (tests/e2e/test_soak.py); bench/soak --minutes N is the long one.
soak: system-deps venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m soak tests/e2e/test_soak.py

lint: venv
	$(BIN)/ruff check idgateway tests bench
	$(BIN)/mypy

# The documentation site, warnings as errors; output in docs/_build (ignored by git).
docs: venv
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html

bench: venv
	bench/run

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build *.egg-info docs/_build
