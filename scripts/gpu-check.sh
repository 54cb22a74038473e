#!/usr/bin/env bash
# The test suite on a real GPU, through wgpu on Vulkan.
#
# The lent GPU machines reach no package registry, so nothing is built there:
#   bash scripts/gpu-check.sh prepare   # here: release test binaries with --features vulkan,
#                                       # stripped and xz-compressed into .gpu/; the Vulkan
#                                       # loader into .gl/
#   bash scripts/gpu-check.sh run       # there (carry .gpu and .gl): each test binary on
#                                       # flex, ndarray and the GPU; a missing adapter fails
# A tree that travels is limited to 64 MiB and each binary is ~9 MB compressed, so
# `prepare` takes the test binaries named in GPU_TESTS (default: the integration
# suite and the unit tests).
# Both folders are listed in .git/info/exclude by `prepare`.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
  for d in .gpu .gl; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude; done
  rm -rf .gpu && mkdir -p .gpu .gl
  wanted=" ${GPU_TESTS:-suite burn_distill} "
  cargo test --release --features vulkan --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' |
    while read -r exe; do
      name=$(basename "$exe" | sed 's/-[0-9a-f]*$//')
      case "$wanted" in *" $name "*) ;; *) continue ;; esac
      strip -o "/tmp/$name" "$exe"
      xz -T0 -7 -c "/tmp/$name" >".gpu/$name.xz"
      rm "/tmp/$name"
    done
  # (The tests embed their fixtures with include_str!, so the binaries stand alone.)
  if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    mkdir -p /tmp/amd64/partial
    apt-get $o update -q >/dev/null
    (cd .gl && apt-get $o download libvulkan1)
  fi
  du -sh .gpu .gl
  ;;
run)
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
  nvidia-smi -L || true
  log="${OUT:-/tmp}/gpu-tests.log"
  : >"$log"
  status=0
  mkdir -p /tmp/gpu-tests
  for packed in .gpu/*.xz; do
    test="/tmp/gpu-tests/$(basename "$packed" .xz)"
    if command -v xz >/dev/null; then xz -dc "$packed" >"$test"
    else python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "$packed" >"$test"; fi
    chmod +x "$test"
    echo "== $(basename "$test")" | tee -a "$log"
    one=$(mktemp)
    if ! BURN_DISTILL_REQUIRE_WGPU=1 "$test" --nocapture >"$one" 2>&1; then
      status=1
    fi
    cat "$one" >>"$log"
    grep -E "^device |test result|FAILED|panicked" "$one" || true
  done
  exit $status
  ;;
*)
  echo "usage: bash scripts/gpu-check.sh prepare|run" >&2
  exit 2
  ;;
esac
