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

# Doctests first (nextest does not run them), then every crate's tests in
# parallel processes under nextest, whose summary closes the output.
test: deps
	cargo test --workspace --doc
	@if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi

fmt:
	cargo fmt --all

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

ci:
	bash .ci/run
