#!/usr/bin/env python3
"""PyTorch baseline for benches/divergences.rs's `gold` row: TRL's own `ULDLoss`
with `use_extended_uld=True` (GOLD's byte-offset alignment, merged span
probabilities, sorted L1), forward + backward with respect to the student
logits, f32 on the CPU, eager (TRL's per-sequence Python loop does not compile
as one graph). The same shapes as the Rust row: 4 sequences, the student's 128
tokens of 3 bytes against the teacher's 96 of 4 bytes (32 spans each),
vocabularies of 32,000 and 32,768, T = 1, no prompt (every label counted),
"observed" merge, no EOS skipped.

    /tmp/torchenv/bin/python -m pip install torch==2.15.0 trl==1.16.0
    /tmp/torchenv/bin/python benches/compare_torch_gold.py
"""

import os
import types

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from trl.experimental.gold.gold_trainer import ULDLoss

# The timing loop of every baseline here (warm-up, at least 3 s and 10 runs).
from compare_torch import fmt, time_case

B, S, T_LEN, VS, VT = 4, 128, 96, 32000, 32768


def main():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, S, VS, generator=g) * 3.0
    v = torch.randn(B, T_LEN, VT, generator=g) * 3.0
    s_ids = (torch.arange(S) * 7919 % VS).repeat(B, 1)
    t_ids = (torch.arange(T_LEN) * 104729 % VT).repeat(B, 1)
    s_off = torch.stack([torch.arange(S) * 3, torch.arange(1, S + 1) * 3], -1).repeat(B, 1, 1)
    t_off = torch.stack([torch.arange(T_LEN) * 4, torch.arange(1, T_LEN + 1) * 4], -1).repeat(B, 1, 1)
    config = types.SimpleNamespace(
        uld_crossentropy_weight=0.0, uld_distillation_weight=1.0,
        uld_student_temperature=1.0, uld_teacher_temperature=1.0,
        uld_skip_student_eos=False, uld_skip_teacher_eos=False,
        use_extended_uld=True, uld_token_merge_strategy="observed", uld_use_hybrid_loss=False)
    uld = ULDLoss(config)

    def loss(student, teacher, _targets):
        return uld(student, teacher, s_ids, t_ids, s_ids, t_ids, s_off, t_off)

    mean, median, n = time_case("eager", B, S, loss, (z, v, None))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, f32, TRL ULDLoss (extended)")
    print(f"| gold | {B}x{S}x{VS}_vs_{T_LEN}x{VT} | eager mean {fmt(mean)} "
          f"(median {fmt(median)}, n={n}) |")


if __name__ == "__main__":
    main()
