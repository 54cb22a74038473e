#!/usr/bin/env bash
# Counts the crate's public functions and methods: `pub fn` lines in src/
# (not `pub(crate)`, `pub(super)`), outside `#[cfg(test)]` modules (the files'
# tails after `mod tests`). An approximation of the public API's size (a
# `pub fn` in a private module that nothing re-exports would count too), for
# before/after comparisons: `scripts/count_public_fns.sh [git-revision]`.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-}
files() { if [ -n "$rev" ]; then git ls-tree -r --name-only "$rev" src; else git ls-files src; fi; }
show() { if [ -n "$rev" ]; then git show "$rev:$1"; else cat "$1"; fi; }
total=0
for f in $(files | grep '\.rs$'); do
  n=$(show "$f" | awk '/^#\[cfg\(test\)\]/ { exit } /^[[:space:]]*pub (const |unsafe |async )?fn / { c++ } END { print c + 0 }')
  total=$((total + n))
done
echo "$total"
