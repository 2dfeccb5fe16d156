# The two commands of the README. Both set everything up on a fresh machine first.
.PHONY: setup demo test bench
setup:
	./scripts/setup.sh
demo: setup
	.venv/bin/xdiffusion demo --out outputs/demo
test: setup
	.venv/bin/python -m pytest -q Testing
bench: setup
	.venv/bin/python bench/run_benchmarks.py
