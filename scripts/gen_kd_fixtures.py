#!/usr/bin/env python3
"""Writes tests/fixtures/kd_torch.json: PyTorch (float64) reference values for KdLoss.

The Rust parity test (tests/torch_parity.rs) only reads the JSON; CI does not need torch.
Regenerate with:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.15.0
    /tmp/torchenv/bin/python scripts/gen_kd_fixtures.py

The reference is PyTorch's own functions, used the way its users write KD:

    soft = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T**2
    hard = F.cross_entropy(s, y)

Masked classes are handled without reusing burn-distill's masking formula:
- a class that is -inf in both teacher and student is *dropped* from the soft term
  (it has p = q = 0, so it cannot contribute), and its gradient is whatever autograd
  gives through the hard term (exactly 0);
- a class that is -inf in the teacher only has p = 0; `kl_div` with a probability
  target (log_target=False) uses xlogy, which gives 0 there.

Logits are rounded to f32 before the float64 computation, so the Rust side reads
exactly the inputs the reference saw. -inf is written as null (JSON has no infinity).
"""

import json
import math
import pathlib

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "kd_torch.json"


def f32_round(x):
    return x.float().double()


def case(name, seed, batch, classes, temperature, scale, soft_weight=0.9, hard_weight=0.1,
         scale_by_t_squared=True, masked_both=0, masked_teacher_only=0):
    g = torch.Generator().manual_seed(seed)
    student = f32_round(torch.randn(batch, classes, generator=g) * scale)
    # A teacher correlated with the student (as after some training), plus noise.
    teacher = f32_round(0.6 * student + 0.8 * scale * torch.randn(batch, classes, generator=g))
    targets = torch.randint(0, classes, (batch,), generator=g)

    # Classes masked in both models: the same columns for every row.
    both = torch.randperm(classes, generator=g)[:masked_both].sort().values
    keep = torch.tensor([c for c in range(classes) if c not in set(both.tolist())])
    # Never mask a target class (its cross-entropy would be +inf).
    targets = keep[torch.randint(0, len(keep), (batch,), generator=g)]
    student[:, both] = -math.inf
    teacher[:, both] = -math.inf
    # Teacher-only masks: a few (row, kept column) pairs, not on the target.
    teacher_only = []
    for _ in range(masked_teacher_only):
        r = int(torch.randint(0, batch, (1,), generator=g))
        c = int(keep[torch.randint(0, len(keep), (1,), generator=g)])
        if c != int(targets[r]):
            teacher[r, c] = -math.inf
            teacher_only.append([r, c])

    T = temperature
    factor = T * T if scale_by_t_squared else 1.0

    def parts(s_full):
        s = s_full[:, keep]
        t = teacher[:, keep]
        p = F.softmax(t / T, dim=1)
        log_q = F.log_softmax(s / T, dim=1)
        soft_rows = F.kl_div(log_q, p, reduction="none").sum(1) * factor
        soft = F.kl_div(log_q, p, reduction="batchmean") * factor
        hard_rows = F.cross_entropy(s_full, targets, reduction="none")
        hard = F.cross_entropy(s_full, targets)
        return soft_rows, soft, hard_rows, hard

    s_leaf = student.clone().requires_grad_(True)
    soft_rows, soft, hard_rows, hard = parts(s_leaf)
    total = soft_weight * soft + hard_weight * hard
    (grad_total,) = torch.autograd.grad(total, s_leaf)

    s_leaf2 = student.clone().requires_grad_(True)
    _, soft2, _, _ = parts(s_leaf2)
    (grad_soft,) = torch.autograd.grad(soft2, s_leaf2)

    for tensor in (soft_rows, hard_rows, grad_total, grad_soft):
        assert torch.isfinite(tensor).all(), name

    def enc(x):
        return [None if math.isinf(v) else v for v in x.flatten().tolist()]

    return {
        "name": name,
        "batch": batch,
        "classes": classes,
        "temperature": T,
        "logit_scale": scale,
        "soft_weight": soft_weight,
        "hard_weight": hard_weight,
        "scale_by_t_squared": scale_by_t_squared,
        "student_logits": enc(student),
        "teacher_logits": enc(teacher),
        "targets": targets.tolist(),
        "masked_both_columns": both.tolist(),
        "masked_teacher_only": teacher_only,
        "soft_rows": soft_rows.detach().tolist(),
        "hard_rows": hard_rows.detach().tolist(),
        "soft": soft.item(),
        "hard": hard.item(),
        "total": total.item(),
        "grad_total": grad_total.flatten().tolist(),
        "grad_soft": grad_soft.flatten().tolist(),
    }


def main():
    cases = [
        case("T1_small", 1, 4, 10, 1.0, 1.0),
        case("T4_cifar_recipe", 2, 8, 10, 4.0, 5.0),
        case("T0.5_sharp", 3, 3, 100, 0.5, 3.0),
        case("T20_paper_mnist", 4, 4, 1000, 20.0, 10.0),
        case("T100_scale300", 5, 2, 1000, 100.0, 300.0),
        case("T2_scale300", 6, 5, 50, 2.0, 300.0),
        case("T0.5_scale300", 7, 3, 200, 0.5, 300.0),
        case("no_t_squared_T8", 8, 6, 30, 8.0, 4.0, scale_by_t_squared=False),
        case("weights_half_half", 9, 4, 20, 3.0, 2.0, soft_weight=0.5, hard_weight=0.5),
        case("soft_only", 10, 4, 20, 3.0, 2.0, soft_weight=1.0, hard_weight=0.0),
        case("masked_both_T4", 11, 4, 20, 4.0, 10.0, masked_both=5),
        case("masked_both_T0.5", 12, 6, 1000, 0.5, 1.0, masked_both=100),
        case("masked_teacher_only_T2", 13, 5, 30, 2.0, 3.0, masked_teacher_only=8),
        case("masked_mixed_T50", 14, 4, 500, 50.0, 100.0, masked_both=30, masked_teacher_only=10),
    ]
    doc = {
        "generator": "scripts/gen_kd_fixtures.py",
        "torch_version": torch.__version__,
        "dtype": "float64 (inputs rounded to f32)",
        "null_means": "-inf",
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, separators=(",", ":")))
    print(f"wrote {len(cases)} cases to {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
