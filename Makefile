# The two commands the README opens with. The tests run on three workers (pytest-xdist)
# on CI's two cores: a fifth of their time is spent waiting on mounts, servers, TTLs
# and subprocesses, which a third worker fills. --dist loadgroup keeps the tests
# marked with one xdist_group on one worker (the two that share the 4 GiB S3 blob).
.PHONY: setup run test lint bench

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q -n 3 --dist loadgroup

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# Every benchmark at full size, one after another (bench/*.py --help for smaller runs).
bench: setup
	for b in bench/bench_*.py; do .venv/bin/python -m bench.$$(basename $$b .py) || exit 1; done
