#!/usr/bin/env bash
# Installs what building ringkv needs beyond Rust itself: a C++ compiler and libclang (RocksDB is
# built from source and its bindings are generated with bindgen). protoc ships inside a crate.
# Installs with apt-get when run as root; otherwise says exactly what is missing.
set -euo pipefail

missing=()
command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v clang >/dev/null 2>&1 || missing+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 \
   && [ -z "${LIBCLANG_PATH:-}" ]; then
  missing+=(libclang-dev)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing build dependencies: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "error: missing build dependencies: ${missing[*]}" >&2
  echo "install them (e.g. sudo apt-get install ${missing[*]}) and run this again" >&2
  exit 1
fi
