# The two commands of the README (plus test-fast, for contributors). Both set everything up on a fresh machine first.
.PHONY: setup demo test test-fast bench
setup:
	./scripts/setup.sh
demo: setup
	.venv/bin/xdiffusion demo --out outputs/demo
test: setup
	.venv/bin/python -m pytest -q Testing
# Everything but the tests marked slow (browser, worker processes, multi-step training): a minute or two.
test-fast:
	.venv/bin/python -m pytest -q -m "not slow" --durations=10 Testing
bench: setup
	.venv/bin/python bench/run_benchmarks.py
