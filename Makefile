.PHONY: demo test setup bench lint

demo:
	bash scripts/quickstart.sh demo

test:
	bash scripts/quickstart.sh test

setup:
	bash scripts/quickstart.sh setup

bench:
	bash scripts/quickstart.sh setup && .venv/bin/python -m bench
