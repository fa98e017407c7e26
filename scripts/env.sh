# Sourced by the scripts: one cargo target directory outside the checkout, shared by the demo,
# the tests and CI on this machine, so RocksDB (most of a cold build) is built once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hestia/target}"
