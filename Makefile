PYTHON ?= .venv/bin/python

.PHONY: demo test release-model

# The main job end to end on generated phantoms (README, first command).
demo:
	bash scripts/demo.sh

# The test suite, installed from scratch (README, second command; what CI runs).
test:
	bash .ci/run

# Reproduce the release model from the shared data (8 min on a 2-core AMX CPU, 60-75 min on 2 AVX2 cores).
release-model:
	PYTHON=$(PYTHON) bash scripts/release_model.sh $(OUT)
