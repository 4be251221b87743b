PYTHON ?= .venv/bin/python

.PHONY: demo test release-model

# The main job end to end on generated phantoms (README, first command).
demo:
	bash scripts/demo.sh

# The test suite, installed from scratch (README, second command; what CI runs).
test:
	bash .ci/run

# Reproduce the release model from the shared data (13 min measured on 2 AVX512-BF16 cores, about 23 min on 2 AVX2-only cores).
release-model:
	PYTHON=$(PYTHON) bash scripts/release_model.sh $(OUT)
