# `make demo` sets everything up and runs the MNIST demo; `make test` runs the checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU TensorFlow for laptops, Binder and CI. On a GPU machine:
#   make demo TF_PACKAGES="tensorflow[and-cuda]==2.21.0 tensorboard==2.21.0"
TF_PACKAGES ?= tensorflow-cpu==2.21.0 tensorboard==2.21.0
# Multi-worker Keras needs tf-keras, and the model server's gRPC side TF Serving's
# protos (tensorflow-serving-api). Both declare the full `tensorflow` wheel as a
# dependency, which beside tensorflow-cpu would install TensorFlow twice: --no-deps.
TF_NO_DEPS ?= tf-keras==2.21.0 tensorflow-serving-api==2.21.0

.PHONY: setup demo test test-kube-35 lint bench bench-env clean

setup: $(VENV)/.kfnb-installed

$(VENV)/.kfnb-installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TF_PACKAGES) -e ".[mnist,widgets,serving,s3,kubernetes,sweeps,test]"
	$(BIN)/pip install --quiet --no-deps $(TF_NO_DEPS)
	touch $@

demo: setup
	$(BIN)/python notebooks/run_demo.py notebooks/mnist.ipynb

lint: setup
	$(BIN)/ruff check
	$(BIN)/mypy kfnb

test: lint
	$(BIN)/pytest -q

# The Kubernetes tests again with the other client line the `kubernetes` extra allows
# (35.x; setup installs 36.x), from a directory put first on the path. --no-deps: its
# dependencies are a subset of 36.x's, already installed.
KUBE_35 := build/kubernetes-35
KUBE_TESTS := tests/test_kubernetes.py tests/test_serving_kubernetes.py tests/test_kubeflow_notebook.py

test-kube-35: setup $(KUBE_35)/.installed
	PYTHONPATH=$(KUBE_35) $(BIN)/python -c "import kubernetes as k; assert k.__version__.startswith('35.'), k.__version__"
	PYTHONPATH=$(KUBE_35) $(BIN)/pytest -q -p no:cacheprovider $(KUBE_TESTS)

$(KUBE_35)/.installed:
	$(BIN)/python -m pip install --quiet --no-deps --target $(KUBE_35) "kubernetes>=35,<36"
	touch $@

bench: setup
	-$(MAKE) bench-env
	$(BIN)/python bench/run_all.py

# The serving benchmark's peer and load generator: KServe's ModelServer in an
# environment of its own (kserve pins protobuf<7, kfnb's environment has 7), and
# autocannon. Optional: bench/serving.py skips what is missing.
bench-env: .venv-kserve/.installed bench/node_modules/.bin/autocannon

.venv-kserve/.installed:
	$(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/pip install --quiet tensorflow-cpu==2.21.0 kserve==0.21.0
	touch $@

bench/node_modules/.bin/autocannon: bench/package.json
	cd bench && npm install --no-audit --no-fund --silent

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
