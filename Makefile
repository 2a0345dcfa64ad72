# The two commands of the README:
#   make compare   the side-by-side comparison of the protocols
#   make test      the whole test suite
# Both install what a fresh machine lacks (libclang-dev) and build first.

# A fixed target directory outside the clone: a second run, or CI on a reused
# machine, reuses RocksDB's C++ build instead of compiling it again.
export CARGO_TARGET_DIR ?= /var/tmp/raftstore-target

.PHONY: deps compare test fmt lint ci

deps:
	@scripts/ensure-deps

compare: deps
	cargo run --release -p bench -- compare $(ARGS)

# nextest runs the tests of every crate in parallel processes; doctests
# (which nextest does not run) follow with the same profile and features.
test: deps
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi
	cargo test --workspace --doc

fmt:
	cargo fmt --all

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

ci:
	bash .ci/run
