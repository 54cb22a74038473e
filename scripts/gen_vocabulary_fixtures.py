#!/usr/bin/env python3
"""Writes tests/fixtures/vocabulary_torch.json: PyTorch float64 references for the
KD loss with a teacher whose vocabulary differs in size from the student's, under
each `VocabularyRule`, for every divergence, each with its gradient with respect
to the student logits.

    /tmp/torchenv/bin/python scripts/gen_vocabulary_fixtures.py

The rules, written here from their definitions (not from the crate):
- a wider teacher (every rule but `Same`): its logits cut to the student's ids
  0..V_s before the softmax;
- `PadTeacher`, narrower teacher: p = softmax(v / T) on ids 0..V_t and 0 on the
  student's other ids; every divergence's term at p_i = 0 is its limit (x·log x
  → 0, via torch.special.xlogy), so forward KL, JSD with β < 1, skew KL with
  α > 0 and TVD are finite there;
- `SharedIds`, narrower teacher: the student's logits cut to ids 0..V_t before
  its softmax, in the soft term only (the hard-label term sees every class).

The divergences are written as their source libraries define them (TRL's
generalised JSD, DistiLLM's skew KLs, Liger's TVD; see gen_divergence_fixtures.py),
on probabilities with xlogy so that zero teacher mass is exact.
The loss is `soft_weight · T² · mean_rows D + hard_weight · CE(z, y)`.
"""

import json
import pathlib

import torch
import torch.nn.functional as F
from torch.special import xlogy

torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "vocabulary_torch.json"


def f32(x):
    return x.float().double()


def kl(a, b):
    """KL(a ‖ b) per row, 0·log 0 = 0."""
    return (xlogy(a, a) - xlogy(a, b)).sum(-1)


def divergence(name, param, q, p):
    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "jsd" and param in (0.0, 1.0):
        # TRL's special cases: β = 0 is forward KL, β = 1 reverse KL.
        return kl(p, q) if param == 0.0 else kl(q, p)
    if name in ("jsd", "jsd_normalized"):
        m = param * p + (1 - param) * q
        value = param * kl(p, m) + (1 - param) * kl(q, m)
        return value / (param * (1 - param)) if name == "jsd_normalized" else value
    if name == "skew_forward_kl":
        return kl(p, param * p + (1 - param) * q)
    if name == "skew_reverse_kl":
        return kl(q, param * q + (1 - param) * p)
    if name == "tvd":
        return 0.5 * (q - p).abs().sum(-1)
    raise ValueError(name)


def loss(z, v, y, rule, name, param, T, sw, hw):
    vs, vt = z.shape[1], v.shape[1]
    student = z
    if vt > vs:
        v = v[:, :vs]
    elif vt < vs and rule == "shared_ids":
        student = z[:, :vt]
    p = F.softmax(v / T, dim=-1)
    if p.shape[1] < student.shape[1]:
        p = torch.cat([p, torch.zeros(p.shape[0], student.shape[1] - p.shape[1])], 1)
    q = F.softmax(student / T, dim=-1)
    soft = divergence(name, param, q, p).mean() * T * T
    return sw * soft + hw * F.cross_entropy(z, y)


def main():
    g = torch.Generator().manual_seed(29)
    B, VS, T, SW, HW = 5, 9, 2.0, 0.7, 0.3
    z = f32(torch.randn(B, VS, generator=g) * 2)
    teachers = {
        "narrow": f32(torch.randn(B, 6, generator=g) * 2),
        "wide": f32(torch.randn(B, 12, generator=g) * 2),
    }
    y = torch.randint(0, VS, (B,), generator=g)
    enc = lambda t: t.flatten().tolist()
    doc = {"generator": "scripts/gen_vocabulary_fixtures.py", "torch_version": torch.__version__,
           "batch": B, "student_classes": VS, "temperature": T, "soft_weight": SW,
           "hard_weight": HW, "student_logits": enc(z), "targets": y.tolist(),
           "teachers": {k: {"classes": t.shape[1], "logits": enc(t)} for k, t in teachers.items()},
           "cases": []}
    divergences = [("forward_kl", None), ("reverse_kl", None), ("jsd", 0.1), ("jsd", 0.5),
                   ("jsd", 0.9), ("jsd", 1.0), ("jsd_normalized", 0.3),
                   ("skew_forward_kl", 0.1), ("skew_reverse_kl", 0.0), ("skew_reverse_kl", 0.1),
                   ("tvd", None)]
    for teacher, v in teachers.items():
        rules = ["truncate_teacher", "pad_teacher", "shared_ids"] if teacher == "wide" \
            else ["pad_teacher", "shared_ids"]
        for rule in rules:
            for name, param in divergences:
                zz = z.clone().requires_grad_(True)
                value = loss(zz, v, y, rule, name, param, T, SW, HW)
                (grad,) = torch.autograd.grad(value, zz)
                finite = bool(torch.isfinite(value))
                doc["cases"].append({"teacher": teacher, "rule": rule, "divergence": name,
                                     "param": param, "finite": finite,
                                     "value": float(value.detach()) if finite else None,
                                     "grad": enc(grad) if finite else None})
    OUT.write_text(json.dumps(doc))
    print(f"wrote {len(doc['cases'])} cases to {OUT}")


if __name__ == "__main__":
    main()
