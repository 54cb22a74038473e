#!/usr/bin/env python3
"""Writes tests/fixtures/divergence_torch.json: PyTorch float64 references for the
divergence family, DKD, logit standardisation, top-k sparse teachers and masked
KD, each with its gradient with respect to the student logits.

    /tmp/torchenv/bin/python scripts/gen_divergence_fixtures.py

Each reference is written the way its source library writes it:
- generalized JSD: TRL's `GKDTrainer.generalized_jsd_loss` (mixture by logsumexp,
  β = 0 / 1 special-cased as forward / reverse KL), summed over classes per row;
- skew KL: DistiLLM's definition KL(p ‖ αp + (1−α)q) and KL(q ‖ αq + (1−α)p);
- DKD: mdistiller's `dkd_loss` (the target masked by subtracting 1000), per batch;
- logit standardisation: Sun et al.'s `normalize` ((z − mean) / (1e-7 + std),
  torch.std unbiased) before the KD loss, CE on the raw logits;
- top-k: the student's log-probabilities gathered at the teacher's top-k classes
  plus one tail bucket log(1 − Σ) on both sides (DistillKit / TRL style);
- masked KD: the mean over rows whose label is not -100 (PyTorch's ignore_index);
- total variation: Liger-Kernel's `LigerTVDLoss` reference, 0.5 * |p - q| summed
  over classes per row, on softmax(logits / T);
- normalised JSD: TRL's generalized JSD divided by beta * (1 - beta).
"""

import json
import math
import pathlib

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "divergence_torch.json"


def f32(x):
    return x.float().double()


def grad_of(fn, z):
    z = z.clone().requires_grad_(True)
    value = fn(z)
    (g,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), g


def jsd_trl(student_logits, teacher_logits, beta, T):
    s = F.log_softmax(student_logits / T, dim=-1)
    t = F.log_softmax(teacher_logits / T, dim=-1)
    if beta == 0:
        return F.kl_div(s, t, reduction="none", log_target=True).sum(-1)
    if beta == 1:
        return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)
    beta_t = torch.tensor(beta)
    mixture = torch.logsumexp(torch.stack([s + torch.log(1 - beta_t), t + torch.log(beta_t)]), dim=0)
    kl_teacher = F.kl_div(mixture, t, reduction="none", log_target=True).sum(-1)
    kl_student = F.kl_div(mixture, s, reduction="none", log_target=True).sum(-1)
    return beta_t * kl_teacher + (1 - beta_t) * kl_student


def skew(student_logits, teacher_logits, alpha, T, reverse):
    q = F.softmax(student_logits / T, dim=-1)
    p = F.softmax(teacher_logits / T, dim=-1)
    if reverse:
        m = alpha * q + (1 - alpha) * p
        return (q * (torch.log(q) - torch.log(m))).sum(-1)
    m = alpha * p + (1 - alpha) * q
    return (p * (torch.log(p) - torch.log(m))).sum(-1)


def tvd_liger(student_logits, teacher_logits, T):
    p = F.softmax(teacher_logits / T, dim=-1)
    q = F.softmax(student_logits / T, dim=-1)
    return 0.5 * (p - q).abs().sum(-1)


def dkd_mdistiller(logits_student, logits_teacher, target, alpha, beta, temperature):
    def _get_gt_mask(logits, target):
        return torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()

    def _get_other_mask(logits, target):
        return torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t, mask1, mask2):
        t1 = (t * mask1).sum(dim=1, keepdims=True)
        t2 = (t * mask2).sum(1, keepdims=True)
        return torch.cat([t1, t2], dim=1)

    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = (F.kl_div(log_pred_student, pred_teacher, reduction="sum")
                 * (temperature ** 2) / target.shape[0])
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
                 * (temperature ** 2) / target.shape[0])
    return alpha * tckd_loss + beta * nckd_loss, tckd_loss, nckd_loss


def normalize(logit):
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def kd_standardized(z, v, y, T, sw, hw):
    soft = F.kl_div(F.log_softmax(normalize(z) / T, 1), F.softmax(normalize(v) / T, 1),
                    reduction="batchmean") * T * T
    return sw * soft + hw * F.cross_entropy(z, y)


def topk_kl(z, v, k, T):
    lp = F.log_softmax(v / T, 1)
    top_lp, idx = lp.topk(k, dim=1)
    lq = F.log_softmax(z / T, 1)
    s_top = lq.gather(1, idx)
    s_tail = torch.log1p(-s_top.exp().sum(1, keepdim=True).clamp(max=1 - 1e-15))
    t_tail = torch.log1p(-top_lp.exp().sum(1, keepdim=True).clamp(max=1 - 1e-15))
    s = torch.cat([s_top, s_tail], 1)
    t = torch.cat([top_lp, t_tail], 1)
    return F.kl_div(s, t, reduction="none", log_target=True).sum(1), idx, top_lp


def masked_kd(z, v, y, T, sw, hw):
    keep = y != -100
    soft_rows = F.kl_div(F.log_softmax(z / T, 1), F.log_softmax(v / T, 1),
                         reduction="none", log_target=True).sum(1) * T * T
    hard_rows = F.cross_entropy(z, y, ignore_index=-100, reduction="none")
    rows = sw * soft_rows + hw * hard_rows
    return (rows * keep).sum() / keep.sum().clamp(min=1)


def main():
    g = torch.Generator().manual_seed(0)
    B, C, T = 6, 12, 2.0
    z = f32(torch.randn(B, C, generator=g) * 3)
    v = f32(0.5 * z + torch.randn(B, C, generator=g) * 3)
    y = torch.randint(0, C, (B,), generator=g)
    enc = lambda t: t.flatten().tolist()
    doc = {"generator": "scripts/gen_divergence_fixtures.py", "torch_version": torch.__version__,
           "batch": B, "classes": C, "temperature": T,
           "student_logits": enc(z), "teacher_logits": enc(v), "targets": y.tolist(), "cases": []}

    def add(name, fn, **params):
        value, grad = grad_of(fn, z)
        doc["cases"].append({"name": name, "params": params, "value": enc(value.reshape(-1)),
                             "grad": enc(grad)})

    for beta in [0.0, 0.1, 0.5, 0.9, 1.0]:
        add("jsd", lambda s, b=beta: jsd_trl(s, v, b, T), beta=beta)
    add("tvd", lambda s: tvd_liger(s, v, T))
    add("jsd_normalized", lambda s: jsd_trl(s, v, 0.3, T) / (0.3 * 0.7), beta=0.3)
    for alpha in [0.1, 0.5]:
        add("skew_forward", lambda s, a=alpha: skew(s, v, a, T, False), alpha=alpha)
        add("skew_reverse", lambda s, a=alpha: skew(s, v, a, T, True), alpha=alpha)
    add("dkd", lambda s: dkd_mdistiller(s, v, y, 1.0, 8.0, 4.0)[0].reshape(1), alpha=1.0, beta=8.0, t=4.0)
    add("dkd_tckd", lambda s: dkd_mdistiller(s, v, y, 1.0, 8.0, 4.0)[1].reshape(1), t=4.0)
    add("dkd_nckd", lambda s: dkd_mdistiller(s, v, y, 1.0, 8.0, 4.0)[2].reshape(1), t=4.0)
    add("kd_standardized", lambda s: kd_standardized(s, v, y, T, 0.9, 0.1).reshape(1), sw=0.9, hw=0.1)
    for k in [1, 5, C]:
        add("topk", lambda s, k=k: topk_kl(s, v, k, T)[0], k=k)
    y_masked = y.clone()
    y_masked[[1, 4]] = -100
    doc["masked_targets"] = y_masked.tolist()
    add("masked_kd", lambda s: masked_kd(s, v, y_masked, T, 0.9, 0.1).reshape(1), sw=0.9, hw=0.1)
    OUT.write_text(json.dumps(doc))
    print(f"wrote {len(doc['cases'])} cases to {OUT}")


if __name__ == "__main__":
    main()
