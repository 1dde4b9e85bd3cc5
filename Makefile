# The two commands of the README. Both bootstrap ./.venv on a fresh machine (CPU torch first).
.PHONY: demo test test-unit test-integration bench-retrieval clean

demo:
	@scripts/bootstrap.sh embed
	@.venv/bin/python examples/demo.py

# The PostgreSQL tests start a temporary server themselves; ensure_postgres.sh installs the binaries if missing
# (MEMOS_REQUIRE_POSTGRES=1, as CI sets it, turns a missing PostgreSQL into a failure instead of skipped tests).
# Two passes: fast unit tests first (fail fast), then the integration tests (subprocesses, kill -9, real servers,
# the real model). `make test-unit` / `make test-integration` run one pass.
test: test-unit test-integration

test-unit:
	@scripts/bootstrap.sh dev
	@scripts/ensure_postgres.sh
	@.venv/bin/python -m pytest -q -m "not integration" tests

test-integration:
	@scripts/bootstrap.sh dev
	@scripts/ensure_postgres.sh
	@.venv/bin/python -m pytest -q -m integration tests

bench-retrieval:
	@scripts/bootstrap.sh embed
	@.venv/bin/memos bench retrieval ../shared/data/madial/madial_en.json

clean:
	rm -rf demo_memory .pytest_cache
