# The two commands of the README. Both bootstrap ./.venv on a fresh machine (CPU torch first).
.PHONY: demo test bench-retrieval clean

demo:
	@scripts/bootstrap.sh embed
	@.venv/bin/python examples/demo.py

test:
	@scripts/bootstrap.sh dev
	@.venv/bin/python -m pytest -q tests

bench-retrieval:
	@scripts/bootstrap.sh embed
	@.venv/bin/memos bench retrieval ../shared/data/madial/madial_en.json

clean:
	rm -rf demo_memory .pytest_cache
