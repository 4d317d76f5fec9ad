# The few commands a newcomer needs. `make test` is what CI runs.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test check fmt demo kafka-up kafka-down bench clean

setup:        ## virtualenv, packages, kcat/prometheus, Kafka jars
	scripts/setup

test:         ## setup + lint + types + the whole test suite (real Kafka and Prometheus)
	scripts/test

check:        ## ruff + mypy only
	scripts/check

fmt:          ## format and auto-fix
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

demo:         ## the end-to-end demo (starts a local broker if none is configured)
	$(BIN)/streamval demo

kafka-up:     ## start a local Kafka broker
	$(BIN)/streamval kafka up

kafka-down:   ## stop it
	$(BIN)/streamval kafka down

bench:        ## regenerate the reports in docs/ (accuracy ~11 min, throughput ~10, clustering ~25, robust ~10, faults ~25)
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.throughput
	$(BIN)/python -m benchmarks.clustering
	$(BIN)/python -m benchmarks.robust
	$(BIN)/python -m benchmarks.faults

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist
