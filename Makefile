# `make demo` sets everything up and runs the MNIST demo; `make test` runs the checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU TensorFlow for laptops, Binder and CI. On a GPU machine:
#   make demo TF_PACKAGES="tensorflow[and-cuda]==2.21.0 tensorboard==2.21.0"
TF_PACKAGES ?= tensorflow-cpu==2.21.0 tensorboard==2.21.0
# Multi-worker Keras needs tf-keras. It declares the full `tensorflow` wheel as a
# dependency, which beside tensorflow-cpu would install TensorFlow twice: --no-deps.
TF_KERAS ?= tf-keras==2.21.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.kfnb-installed

$(VENV)/.kfnb-installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TF_PACKAGES) -e ".[mnist,widgets,serving,kubernetes,test]"
	$(BIN)/pip install --quiet --no-deps $(TF_KERAS)
	touch $@

demo: setup
	$(BIN)/python notebooks/run_demo.py notebooks/mnist.ipynb

lint: setup
	$(BIN)/ruff check
	$(BIN)/mypy kfnb

test: lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
