#!/usr/bin/env bash
# Installs what building Hestia needs on a fresh machine: a Rust toolchain (checked, not
# installed: use rustup), and for RocksDB a C++20 compiler and clang/libclang for bindgen.
# Run as root it installs missing Debian/Ubuntu packages; otherwise it prints the command.
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v clang >/dev/null 2>&1 || need+=(clang)
# Calls encode audio with the system's libopus, found by pkg-config.
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists opus 2>/dev/null || need+=(libopus-dev)
# The `mic` feature (microphone and speaker in calls) talks to ALSA; CI builds and tests it.
pkg-config --exists alsa 2>/dev/null || need+=(libasound2-dev)
# The terminal client's end-to-end test drives it in tmux, as a person would.
command -v tmux >/dev/null 2>&1 || need+=(tmux)
# `sim run --real` builds network namespaces for partitions with ip (iproute2).
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# bindgen loads libclang at build time.
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
  need+=(libclang-dev)
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: missing ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no Rust toolchain; install one with rustup (https://rustup.rs), then rerun" >&2
  exit 1
fi

# The session cross-check runs the PyPI packages x3dh and doubleratchet (with pynacl) in a
# virtualenv beside the cargo target directory; reinstalled only when the pins change.
venv="${HESTIA_VENV:-$HOME/.cache/hestia/venv}"
req="$(dirname "$0")/../tests/python/requirements.txt"
if ! command -v python3 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  else
    echo "setup: python3 missing; run: sudo apt-get install -y python3 python3-venv" >&2
    exit 1
  fi
fi
if ! cmp -s "$req" "$venv/.requirements" 2>/dev/null; then
  echo "setup: installing the cross-check's Python packages into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$venv/.requirements"
fi

# The push tests run a real Web Push service, the npm package web-push-testing (Node 20 or
# later), from a directory beside the cargo target directory; reinstalled only when its lock
# changes.
push_dir="${HESTIA_PUSH_SERVICE:-$HOME/.cache/hestia/push-service}"
push_src="$(dirname "$0")/../tests/push-service"
node_ok() { command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
  [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ]; }
if ! node_ok; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing nodejs and npm (the push tests' push service)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  if ! node_ok; then
    echo "setup: the push tests need Node.js 20 or later with npm; install them and rerun" >&2
    exit 1
  fi
fi
if ! cmp -s "$push_src/package-lock.json" "$push_dir/package-lock.json" 2>/dev/null ||
  [ ! -d "$push_dir/node_modules/web-push-testing" ]; then
  echo "setup: installing the push tests' push service into $push_dir" >&2
  mkdir -p "$push_dir"
  cp "$push_src/package.json" "$push_src/package-lock.json" "$push_dir/"
  (cd "$push_dir" && npm ci --no-audit --no-fund --silent)
fi
cp "$push_src/loopback.js" "$push_dir/"
