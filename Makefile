# Two commands on a fresh machine: `make train` (the default Darcy job) and `make test` (the test suite).
# Both bootstrap .venv from this repository's own files first (scripts/bootstrap.sh; idempotent).
.PHONY: bootstrap train test bench lint

bootstrap:
	./scripts/bootstrap.sh

train: bootstrap
	.venv/bin/tgalore fit

test: bootstrap
	.venv/bin/python -m pytest

bench: bootstrap  # every section of BENCHMARKS.md (about 45 minutes on a 2-core CPU)
	.venv/bin/python -m bench.optim_bench
	.venv/bin/python -m bench.memory_bench
	.venv/bin/python -m bench.tensorgrad_bench
	.venv/bin/python -m bench.defaults_study
	.venv/bin/python -m bench.tables --quick

lint: bootstrap
	.venv/bin/ruff check app datamodules callbacks bench tests
