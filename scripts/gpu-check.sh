#!/usr/bin/env bash
# The test suite and the GPU bench on a real GPU, through wgpu on Vulkan, with
# the fused Cube kernel (feature cube-kernel).
#
# The lent GPU machines reach no package registry, so nothing is built there:
#   bash scripts/gpu-check.sh prepare   # here: release test binaries and the `gpu` bench with
#                                       # --features vulkan,cube-kernel, stripped and
#                                       # xz-compressed into .gpu/; the Vulkan loader into .gl/
#   bash scripts/gpu-check.sh run       # there (carry .gpu and .gl): each test binary on
#                                       # flex, ndarray and the GPU (a missing adapter fails),
#                                       # then the bench (with the 8192x128256 cases); logs
#                                       # in $OUT (gpu-tests.log, gpu-bench.txt)
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
  wanted=" ${GPU_TESTS:-suite burn_distill} gpu "
  features=vulkan,cube-kernel
  { cargo test --release --features $features --no-run --message-format=json 2>/dev/null
    cargo bench --features $features --bench gpu --no-run --message-format=json 2>/dev/null; } |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])
    elif m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
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
    [ "$(basename "$packed")" = gpu.xz ] && continue # the bench, below
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
  # The bench: fused kernel against burn ops + autodiff, 512x32000 and 8192x128256.
  if [ -f .gpu/gpu.xz ]; then
    bench=/tmp/gpu-tests/gpu
    python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' .gpu/gpu.xz >"$bench"
    chmod +x "$bench"
    BURN_DISTILL_BENCH_LLM=1 "$bench" --bench --warm-up-time 1 --measurement-time 3 \
      2>&1 | tee "${OUT:-/tmp}/gpu-bench.txt" | grep -E "^memory|^device|time:" || status=1
  fi
  exit $status
  ;;
*)
  echo "usage: bash scripts/gpu-check.sh prepare|run" >&2
  exit 2
  ;;
esac
