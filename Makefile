# Two commands on a fresh machine:
#   make demo   create .venv, install, run the offline quickstart pipeline
#   make test   create .venv, install with the test extras and the example plugin, run ruff and pytest
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch and torchvision as this machine's pip serves them (Python 3.11, x86-64); `make TORCH= test`
# keeps whatever torch the environment already resolves.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml plugins/amemctl-example/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]' -e plugins/amemctl-example
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/amemctl run pipelines/quickstart.yaml

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
