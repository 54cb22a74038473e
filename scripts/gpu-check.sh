#!/usr/bin/env bash
# The device checks on a machine with a real GPU, through wgpu on Vulkan:
#   bash scripts/gpu-check.sh
# Runs every test on flex, ndarray and the GPU (a missing adapter is a failure,
# not a skip), then the KD loss bench on all three, and prints a short table.
# Needs a Vulkan loader and driver (libvulkan1 and the GPU vendor's ICD).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== adapter"
(vulkaninfo --summary 2>/dev/null || echo "vulkaninfo not installed") | grep -E "deviceName|driverName|apiVersion" || true
echo "== tests on flex, ndarray and the GPU (wgpu/Vulkan)"
BURN_DISTILL_REQUIRE_WGPU=1 cargo test --release --features vulkan 2>&1 | tee /tmp/burn-distill-gpu-tests.log | grep -E "test result|FAILED|panicked"
echo "== KD loss, forward + backward"
BURN_DISTILL_BENCH_WGPU=1 cargo bench --features vulkan --bench kd_loss 2>&1 \
  | grep -E "^kd_loss|time:" | grep -v "%" | paste - - \
  | awk '{ printf "| %s | %s %s |\n", $1, $4, $5 }'
