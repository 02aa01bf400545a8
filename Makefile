# The two commands the README opens with.
.PHONY: setup run test lint bench

setup:
	bash scripts/setup.sh

run: setup
	bash scripts/demo.sh

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench: setup
	.venv/bin/python -m bench.run
