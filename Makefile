PYTHON ?= .venv/bin/python

.PHONY: demo test release-model

# The main job end to end on generated phantoms (README, first command).
demo:
	bash scripts/demo.sh

# The test suite, installed from scratch (README, second command; what CI runs).
test:
	bash .ci/run

# Reproduce the release model from the shared data (measured on 2 cores: 10 min with AMX bf16; README "Release model").
release-model:
	PYTHON=$(PYTHON) bash scripts/release_model.sh $(OUT)
