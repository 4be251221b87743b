PYTHON ?= .venv/bin/python

.PHONY: demo test release-model gpu-check

# The main job end to end on generated phantoms (README, first command).
demo:
	bash scripts/demo.sh

# The test suite, installed from scratch (README, second command; what CI runs).
test:
	bash .ci/run

# Reproduce the release model from the shared data (measured on 2 cores: 10 min with AMX bf16; README "Release model").
release-model:
	PYTHON=$(PYTHON) bash scripts/release_model.sh $(OUT)

# The GPU path end to end on an NVIDIA machine, into OUT/gpu_check.{json,md} (README "On NVIDIA GPUs").
gpu-check:
	bash scripts/gpu_check.sh $(OUT)
