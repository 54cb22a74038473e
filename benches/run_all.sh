#!/usr/bin/env bash
# Every number in BENCHMARKS.md, in one run on one idle machine:
#   bash benches/run_all.sh [PYTHON_WITH_TORCH]
# The PyTorch columns need a Python with torch 2.x (CI does not install it); without
# one they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-}"
echo "== machine"; nproc; grep -m1 "model name" /proc/cpuinfo || true; free -g | head -2
cargo build --release --example kd_memory --quiet
echo "== cargo bench --features ndarray --bench kd_loss"
# `ndarray` compiles the fused kernel in for ndarray too (flex has it by default).
cargo bench --features ndarray --bench kd_loss 2>&1 | grep -E "^threads|^kd_loss|time:"
echo "== cargo bench --bench combiner"
cargo bench --bench combiner 2>&1 | grep -E "^combiner:|^specialist_combiner|time:"
echo "== cargo bench --bench divergences"
cargo bench --bench divergences 2>&1 | grep -E "^threads|^divergences|time:"
echo "== peak memory (max resident set), 512x32000"
for mode in inputs analytic autodiff; do
  /usr/bin/time -f "$mode: %M KiB" "${CARGO_TARGET_DIR:-target}"/release/examples/kd_memory "$mode" 512 32000 2>&1 | tail -1
done
echo "== peak memory of every loss, fused (max resident set), 512x32000"
for loss in reverse_kl jsd_0.5 jsd_normalized_0.1 skew_forward_kl_0.1 skew_reverse_kl_0.1 tvd dkd sparse_top64; do
  /usr/bin/time -f "analytic $loss: %M KiB" "${CARGO_TARGET_DIR:-target}"/release/examples/kd_memory analytic 512 32000 "$loss" 2>&1 | tail -1
done
# The top-k teacher's inputs are the student and [512, 64] values: its own baseline.
/usr/bin/time -f "inputs sparse_top64: %M KiB" "${CARGO_TARGET_DIR:-target}"/release/examples/kd_memory inputs 512 32000 sparse_top64 2>&1 | tail -1
echo "== cargo bench --bench store"
cargo bench --bench store 2>&1 | grep -E "^threads|^k =|^store|^baseline|time:|thrpt:"
echo "== cargo bench --bench linear"
cargo bench --bench linear 2>&1 | grep -E "^threads|^linear|time:"
cargo build --release --example linear_memory --quiet
echo "== peak memory of the linear paths (max resident set), 2048 tokens, d 512"
for vocab in 32000 128256; do
  for mode in inputs fused materialised autodiff; do
    /usr/bin/time -f "$mode $vocab: %M KiB, %e s" "${CARGO_TARGET_DIR:-target}"/release/examples/linear_memory "$mode" 2048 512 "$vocab" 2>&1 | tail -1
  done
done
echo "== cargo bench --bench lm_step"
cargo bench --bench lm_step 2>&1 | grep -E "^threads|^lm_step|time:"
echo "== cargo bench --bench features"
cargo bench --bench features 2>&1 | grep -E "^threads|^features|time:"
if [ -n "$python" ]; then
  echo "== PyTorch"
  "$python" benches/compare_torch.py
  "$python" benches/compare_torch.py --divergences
  for mode in eager compile; do
    /usr/bin/time -f "torch $mode: %M KiB" "$python" benches/compare_torch.py --once "$mode" 512 32000 2>&1 | tail -1
  done
  /usr/bin/time -f "torch import + inputs only: %M KiB" "$python" -c "import torch; torch.randn(512, 32000); torch.randn(512, 32000)" 2>&1 | tail -1
  "$python" benches/compare_torch_linear.py
  for vocab in 32000 128256; do
    for mode in materialised chunked; do
      /usr/bin/time -f "torch $mode $vocab: %M KiB, %e s" "$python" benches/compare_torch_linear.py --once "$mode" 2048 512 "$vocab" 2>&1 | tail -1
    done
    /usr/bin/time -f "torch import + inputs $vocab: %M KiB" "$python" -c "import sys; sys.path.insert(0, 'benches'); import compare_torch_linear as c; c.inputs(2048, 512, $vocab)" 2>&1 | tail -1
  done
  "$python" benches/compare_torch_store.py
  "$python" benches/compare_torch.py --lm
  # torchdistill's feature losses (pip install torchdistill==1.1.5 beside torch).
  "$python" benches/compare_torch_features.py
fi
