# Sourced by the scripts: one cargo target directory outside the checkout, shared by the demo,
# the tests and CI on this machine, so RocksDB (most of a cold build) is built once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hestia/target}"
# The Python with the cross-check's packages (made by scripts/setup.sh).
export HESTIA_PYTHON="${HESTIA_PYTHON:-${HESTIA_VENV:-$HOME/.cache/hestia/venv}/bin/python}"
