# Two commands do all set-up on a fresh Debian machine (Python 3.11, node 20, root):
#   make demo   - run the gateway in front of the bundled demo back end
#   make test   - install everything the tests need, then run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test test-floor venv system-deps lint bench clean

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# An editable install does not expose twisted/plugins/ to twistd: put the
	# checkout itself on the venv's path so `twistd idgateway` finds the plugin.
	$(BIN)/python -c 'import site, os; open(os.path.join(site.getsitepackages()[0], "idgateway-checkout.pth"), "w").write(os.getcwd() + "\n")'
	touch $@

venv: $(VENV)/.installed

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

test: system-deps venv test-floor
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: venv
	$(BIN)/ruff check idgateway tests bench
	$(BIN)/mypy

bench: venv
	bench/run

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build *.egg-info
