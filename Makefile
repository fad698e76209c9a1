# Two commands on a fresh machine: `make train` (the default Darcy job) and `make test` (the test suite).
# Both bootstrap .venv from this repository's own files first (scripts/bootstrap.sh; idempotent).
.PHONY: bootstrap train test bench lint

bootstrap:
	./scripts/bootstrap.sh

train: bootstrap
	.venv/bin/tgalore fit

test: bootstrap
	.venv/bin/python -m pytest

# Every section of BENCHMARKS.md; the accuracy studies train through `tgalore fit` runs (~335 CPU-minutes: about 3 h
# on a 2-core CPU with one process per core).
# BENCH_LAUNCHER=/work/cpu-run prefixes each training process; finished runs are cached in bench/out/runs.
# BENCH_JOBS training processes run at once (default: one per core, each with one torch thread).
bench: export BENCH_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
bench: bootstrap
	.venv/bin/python -m bench.optim_bench
	.venv/bin/python -m bench.memory_bench
	.venv/bin/python -m bench.tensorgrad_bench
	.venv/bin/python -m bench.defaults_study
	.venv/bin/python -m bench.tables

lint: bootstrap
	.venv/bin/ruff check app datamodules callbacks bench tests
