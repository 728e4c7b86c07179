#!/usr/bin/env bash
# Starts the kvs server: builds the release binary if it is missing or out
# of date, then replaces this shell with `kvs serve "$@"`, so signals sent
# to this process (or its process group) reach the server itself.
#
#   ./run.sh --port 8001 --working-dir data
#
# Works from any directory and never changes the caller's working
# directory, so relative --working-dir paths mean what the caller meant.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in
  /*) ;;
  *) target_dir="$PWD/$target_dir" ;;
esac

# cargo decides whether anything is stale. Its progress goes to stderr
# while it builds; the one "Finished" line it prints when nothing needed
# building is dropped, so an up-to-date start prints nothing.
color=never
[ -t 2 ] && color=always
if ! cargo build --release --color "$color" --manifest-path "$repo/Cargo.toml" 2>&1 >/dev/null \
    | sed -u -E '/Finished.*target\(s\) in /d' >&2; then
  echo "run.sh: building kvs failed; see cargo's errors above" >&2
  exit 2
fi

exec "$target_dir/release/kvs" serve "$@"
