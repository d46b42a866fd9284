# Two commands do all set-up on a fresh Debian machine (Python 3.11, node 20, root):
#   make demo   - run the gateway in front of the bundled demo back end
#   make test   - install everything the tests need, then run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test venv system-deps lint docs bench clean

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# An editable install does not expose twisted/plugins/ to twistd: put the
	# checkout itself on the venv's path so `twistd idgateway` finds the plugin.
	$(BIN)/python -c 'import site, os; open(os.path.join(site.getsitepackages()[0], "idgateway-checkout.pth"), "w").write(os.getcwd() + "\n")'
	touch $@

venv: $(VENV)/.installed

system-deps:
	scripts/install-system-deps

demo: venv
	$(BIN)/python scripts/demo.py

test: system-deps venv docs
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: venv
	$(BIN)/ruff check idgateway tests bench
	$(BIN)/mypy

# The documentation site, warnings as errors; output in docs/_build (ignored by git).
docs: venv
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

bench: venv
	bench/run

clean:
	rm -rf $(VENV) build *.egg-info docs/_build
