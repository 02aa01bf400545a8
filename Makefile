# The two commands the README opens with. The tests run on two workers (pytest-xdist):
# most of their time is spent waiting on mounts, servers and subprocesses.
.PHONY: setup run test lint bench

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q -n 2

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# Every benchmark at full size, one after another (bench/*.py --help for smaller runs).
bench: setup
	for b in bench/bench_*.py; do .venv/bin/python -m bench.$$(basename $$b .py) || exit 1; done
