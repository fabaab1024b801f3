#!/usr/bin/env bash
# Makes sure the embedded default dataset (Fashion-MNIST, four IDX .gz files) is present.
# Usage: scripts/ensure_data.sh [--optional]   (--optional: warn instead of failing)
set -u
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
have() { local d="$1"; for f in $FILES; do [ -s "$d/$f" ] || return 1; done; return 0; }
for d in "${ARSP_DATA_DIR:-}" /usr/share/datasets/fashion-mnist; do
  if [ -n "$d" ] && have "$d"; then echo "Fashion-MNIST: found in $d"; exit 0; fi
done
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; then
  echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist package ..."
  if { $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
       { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; } \
     && have /usr/share/datasets/fashion-mnist; then
    echo "Fashion-MNIST: installed in /usr/share/datasets/fashion-mnist"; exit 0
  fi
fi
cat >&2 <<MSG
Fashion-MNIST is not available and could not be installed automatically.
Get the four files ($FILES) in one of these ways, then rerun:
  * on Debian/Ubuntu:  sudo apt-get install dataset-fashion-mnist   (installs /usr/share/datasets/fashion-mnist/)
  * or copy them from the dataset's authors (github.com/zalandoresearch/fashion-mnist, data/fashion/)
    into a directory and set ARSP_DATA_DIR=/that/directory (or pass --data_dir=/that/directory).
MSG
[ "${1:-}" = "--optional" ] && exit 0
exit 1
