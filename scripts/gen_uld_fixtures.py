#!/usr/bin/env python3
"""Writes tests/fixtures/uld_trl.json: references for the Universal Logit
Distillation loss (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation:
the Universal Logit Distillation Loss for LLMs", eq. 3) between a student and a
teacher with vocabularies of different sizes, value and gradient with respect to
the student logits.

    /tmp/torchenv/bin/python -m pip install torch numpy trl==1.16.0
    /tmp/torchenv/bin/python scripts/gen_uld_fixtures.py

Two independent references per case:
- TRL's own implementation, `trl.experimental.gold.gold_trainer.ULDLoss` (the
  class GOLD uses), called as the trainer calls it, in float64: its plain ULD
  (`use_extended_uld=False`, no hybrid), the "observed" token merge (no shift),
  no EOS skipped, cross-entropy weight 0; each sequence's answer is its tokens
  whose label is not -100, the student's and the teacher's at the same
  positions (TRL aligns the first min(n_s, n_t) answer tokens of each). TRL
  sums the L1 distance between the sorted probability vectors (the shorter
  zero-padded) over the answer, divides by its length, and averages over the
  sequences.
- the paper's formula by hand in numpy float64: per token
  Σ_i |sort↓(q)_i − sort↓(p)_i| with zero padding; its gradient in closed form
  (∂/∂q_j = sign(q_j − p_(rank of q_j)), through the softmax), checked here
  against TRL's autograd gradient.
"""

import json
import os
import pathlib
import types

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import numpy as np
import torch
import trl
from trl.experimental.gold.gold_trainer import ULDLoss

torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "uld_trl.json"


def trl_uld(z, v, labels, temperature, teacher_labels=None, teacher_temperature=None):
    config = types.SimpleNamespace(
        uld_crossentropy_weight=0.0,
        uld_distillation_weight=1.0,
        uld_student_temperature=temperature,
        uld_teacher_temperature=teacher_temperature or temperature,
        uld_skip_student_eos=False,
        uld_skip_teacher_eos=False,
        use_extended_uld=False,
        uld_token_merge_strategy="observed",
        uld_use_hybrid_loss=False,
    )
    loss = ULDLoss(config)
    teacher_labels = labels if teacher_labels is None else teacher_labels
    s_ids = torch.zeros(labels.shape, dtype=torch.long)
    t_ids = torch.zeros(teacher_labels.shape, dtype=torch.long)
    return loss(z, v, labels, teacher_labels, s_ids, t_ids)


def softmax(x, t):
    e = np.exp(x / t - (x / t).max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def paper_uld(z, v, t):
    """Per token: value and d value / d z (closed form)."""
    q, p = softmax(z, t), softmax(v, t)
    n = max(q.shape[-1], p.shape[-1])
    values, grads = [], []
    for qr, pr in zip(q, p):
        qs = np.zeros(n)
        ps = np.zeros(n)
        order = np.argsort(-qr, kind="stable")
        qs[: len(qr)] = qr[order]
        ps[: len(pr)] = np.sort(pr)[::-1]
        values.append(np.abs(qs - ps).sum())
        # ∂/∂q_j: the sign of its own difference, at its rank.
        g = np.zeros(len(qr))
        g[order] = np.sign(qs[: len(qr)] - ps[: len(qr)])
        # Through q = softmax(z / t): dz = q ⊙ (g − Σ q g) / t.
        grads.append(qr * (g - (qr * g).sum()) / t)
    return np.array(values), np.array(grads)


def main():
    rng = np.random.default_rng(29)
    B, S, T = 2, 5, 2.0
    # -100: the prompt (left out); sequence 1 has a shorter answer.
    labels = np.array([[-100, 3, 1, 4, 0], [-100, -100, 2, 5, -100]])
    doc = {"generator": "scripts/gen_uld_fixtures.py", "trl_version": trl.__version__,
           "torch_version": torch.__version__, "batch": B, "seq": S, "temperature": T,
           "labels": labels.flatten().tolist(), "cases": []}
    for vs, vt in [(7, 11), (9, 6), (8, 8)]:
        z = rng.normal(size=(B, S, vs)) * 2
        v = rng.normal(size=(B, S, vt)) * 2
        zt = torch.tensor(z, requires_grad=True)
        value = trl_uld(zt, torch.tensor(v), torch.tensor(labels), T)
        (grad,) = torch.autograd.grad(value, zt)
        # The paper's formula, reduced as TRL reduces: per sequence the mean
        # over its answer tokens, then the mean over the sequences.
        keep = labels != -100
        per_token, per_token_grad = paper_uld(z.reshape(-1, vs), v.reshape(-1, vt), T)
        per_token = per_token.reshape(B, S)
        per_token_grad = per_token_grad.reshape(B, S, vs)
        counts = keep.sum(1)
        paper = ((per_token * keep).sum(1) / counts).mean()
        paper_grad = per_token_grad * (keep / counts[:, None])[..., None] / B
        assert abs(float(value.detach()) - paper) < 1e-12, (float(value.detach()), paper)
        assert np.abs(grad.numpy() - paper_grad).max() < 1e-12
        doc["cases"].append({
            "student_classes": vs, "teacher_classes": vt,
            "student_logits": z.flatten().tolist(), "teacher_logits": v.flatten().tolist(),
            "value": float(value.detach()), "grad": grad.flatten().tolist(),
            "paper_per_token": per_token.flatten().tolist(),
        })
    # The paper's alignment of answers of different lengths: TRL pairs the first
    # min(n_s, n_t) answer tokens of each sequence (each model's own positions,
    # its own sequence length), the rest of the longer answer left out.
    s_labels = np.array([[-100, 1, 2, 3, 4, 5], [-100, -100, 1, 2, -100, -100]])
    t_labels = np.array([[-100, -100, 1, 2, 3], [-100, 1, 2, 3, 4]])
    z = rng.normal(size=(B, 6, 7)) * 2
    v = rng.normal(size=(B, 5, 10)) * 2
    zt = torch.tensor(z, requires_grad=True)
    value = trl_uld(zt, torch.tensor(v), torch.tensor(s_labels), 1.5,
                    teacher_labels=torch.tensor(t_labels), teacher_temperature=2.5)
    (grad,) = torch.autograd.grad(value, zt)
    doc["unequal_answers"] = {
        "student_labels": s_labels.flatten().tolist(), "teacher_labels": t_labels.flatten().tolist(),
        "student_shape": [B, 6, 7], "teacher_shape": [B, 5, 10],
        "student_temperature": 1.5, "teacher_temperature": 2.5,
        "student_logits": z.flatten().tolist(), "teacher_logits": v.flatten().tolist(),
        "value": float(value.detach()), "grad": grad.flatten().tolist(),
    }
    OUT.write_text(json.dumps(doc))
    print(f"wrote {len(doc['cases'])} cases to {OUT} (TRL {trl.__version__})")


if __name__ == "__main__":
    main()
