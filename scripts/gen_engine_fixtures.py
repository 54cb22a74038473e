#!/usr/bin/env python3
"""Writes tests/fixtures/engine_numpy.json: float64 references for `KdLoss` with
every `Divergence`, dense and top-k teachers, row masks, `ignore_index` and the
global normaliser, with the gradient with respect to the student logits.

    python3 -m pip install numpy && python3 scripts/gen_engine_fixtures.py

Independent of the crate: values are the textbook definitions written out in
numpy; gradients are the one-engine closed form

    dL/dz_i = (f/T) * q_i * (g_i - sum_j q_j g_j),   g_j = dD/dq_j

(f = T^2 when scaled) with g from each divergence's own derivative, plus the
hard term softmax(z) - onehot. Every gradient is checked here against central
finite differences of the value before it is written.
"""

import json
import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "engine_numpy.json"


def log_softmax(x, t):
    s = x / t
    s = s - s.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def xlogy_ratio(a, b):
    """sum_j a_j log(a_j / b_j) with 0 log 0 = 0, per row."""
    out = np.zeros(a.shape[0])
    for r in range(a.shape[0]):
        m = a[r] > 0
        out[r] = (a[r][m] * (np.log(a[r][m]) - np.log(b[r][m]))).sum()
    return out


def divergence(name, param, q, p):
    """Value per row and g = dD/dq (same shape as q)."""
    if name == "forward_kl":
        return xlogy_ratio(p, q), np.where(p > 0, -p / q, 0.0)
    if name == "reverse_kl":
        return xlogy_ratio(q, p), np.log(q / p) + 1.0
    if name in ("jsd", "jsd_normalized"):
        b = param
        if b == 0.0:
            v, g = divergence("forward_kl", None, q, p)
        elif b == 1.0:
            v, g = divergence("reverse_kl", None, q, p)
        else:
            m = b * p + (1 - b) * q
            v = b * xlogy_ratio(p, m) + (1 - b) * xlogy_ratio(q, m)
            g = (1 - b) * np.log(q / m)
            if name == "jsd_normalized":
                v, g = v / (b * (1 - b)), g / (b * (1 - b))
        return v, g
    if name == "skew_forward_kl":
        a = param
        m = a * p + (1 - a) * q
        return xlogy_ratio(p, m), -(1 - a) * p / m
    if name == "skew_reverse_kl":
        a = param
        m = a * q + (1 - a) * p
        return xlogy_ratio(q, m), np.log(q / m) + 1 - a * q / m
    if name == "tvd":
        return 0.5 * np.abs(q - p).sum(axis=1), 0.5 * np.sign(q - p)
    raise ValueError(name)


def buckets(z_logq, indices, p_top):
    """Top-k buckets: the student's probabilities at the teacher's classes and its
    tail, the teacher's top-k probabilities and 1 - their sum."""
    q_all = np.exp(z_logq)
    q_top = np.take_along_axis(q_all, indices, axis=1)
    q_tail = 1.0 - q_top.sum(axis=1, keepdims=True)
    p_tail = np.clip(1.0 - p_top.sum(axis=1, keepdims=True), 0.0, None)
    return np.concatenate([q_top, q_tail], 1), np.concatenate([p_top, p_tail], 1)


def rows_and_grad(z, v, y, case):
    """Per-row total loss and its gradient per row (rows not yet masked)."""
    t, sw, hw = case["temperature"], case["soft_weight"], case["hard_weight"]
    f = t * t if case["scale_by_t_squared"] else 1.0
    lq = log_softmax(z, t)
    q = np.exp(lq)
    if case["top_k"]:
        lp_full = log_softmax(v, t)
        idx = np.argsort(-lp_full, axis=1, kind="stable")[:, : case["top_k"]]
        p_top = np.exp(np.take_along_axis(lp_full, idx, axis=1))
        qb, pb = buckets(lq, idx, p_top)
        value, gb = divergence(case["divergence"], case["param"], qb, pb)
        # dD/dq_i for class i: the bucket it falls in (its own top-k bucket, or the tail).
        k = case["top_k"]
        g = np.repeat(gb[:, k:k + 1], z.shape[1], axis=1)
        np.put_along_axis(g, idx, gb[:, :k], axis=1)
        case["teacher_indices"] = idx.flatten().tolist()
        case["teacher_top_log_probs"] = np.log(p_top).flatten().tolist()
    else:
        p = np.exp(log_softmax(v, t))
        value, g = divergence(case["divergence"], case["param"], q, p)
    soft_grad = (f / t) * q * (g - (q * g).sum(axis=1, keepdims=True))
    soft = f * value
    q1 = np.exp(log_softmax(z, 1.0))
    if y is None:
        return sw * soft, sw * soft_grad, soft, np.zeros_like(soft)
    yy = np.where(y < 0, 0, y)
    hard = -np.log(q1[np.arange(len(yy)), yy])
    onehot = np.zeros_like(z)
    onehot[np.arange(len(yy)), yy] = 1.0
    return sw * soft + hw * hard, sw * soft_grad + hw * (q1 - onehot), soft, hard


def loss(z, v, y, case):
    total_rows, grad_rows, soft_rows, hard_rows = rows_and_grad(z, v, y, case)
    keep = np.ones(z.shape[0], dtype=bool)
    if case["keep_rows"] is not None:
        keep &= np.array(case["keep_rows"])
    if y is not None and case["ignore_index"] is not None:
        keep &= y != case["ignore_index"]
    count = case["global_count"] if case["global_count"] is not None else keep.sum()
    count = max(count, 1)
    w = keep / count
    total = (total_rows * w).sum()
    grad = grad_rows * w[:, None]
    return total, grad, (soft_rows * w).sum(), (hard_rows * w).sum(), total_rows * keep


def check_gradient(z, v, y, case, grad):
    eps = 1e-6
    numeric = np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        numeric[idx] = (loss(zp, v, y, case)[0] - loss(zm, v, y, case)[0]) / (2 * eps)
    err = np.abs(numeric - grad).max() / max(np.abs(grad).max(), 1e-12)
    assert err < 1e-5, (case["name"], err)


def main():
    rng = np.random.default_rng(7)
    batch, classes = 5, 9
    # f32-exact inputs, so that f32 tensors see the same numbers.
    z = (rng.normal(size=(batch, classes)) * 2.5).astype(np.float32).astype(np.float64)
    v = (0.6 * z + rng.normal(size=(batch, classes)) * 2.0).astype(np.float32).astype(np.float64)
    y = rng.integers(0, classes, size=batch)
    y_ignored = y.copy()
    y_ignored[2] = -100
    divergences = [
        ("forward_kl", None), ("reverse_kl", None), ("jsd", 0.0), ("jsd", 0.3), ("jsd", 1.0),
        ("jsd_normalized", 0.0), ("jsd_normalized", 0.3), ("jsd_normalized", 1.0),
        ("skew_forward_kl", 0.1), ("skew_reverse_kl", 0.1), ("tvd", None),
    ]
    cases = []
    for name, param in divergences:
        for variant in ["plain", "masked", "top_k", "global_count", "no_labels"]:
            case = {
                "divergence": name, "param": param, "temperature": 2.0,
                "soft_weight": 0.7, "hard_weight": 0.3, "scale_by_t_squared": True,
                "top_k": 0, "keep_rows": None, "ignore_index": None, "global_count": None,
                "labels": y.tolist(),
            }
            if variant == "masked":
                case.update(keep_rows=[True, False, True, True, True], ignore_index=-100,
                            labels=y_ignored.tolist(), temperature=0.5)
            elif variant == "top_k":
                case.update(top_k=4, temperature=3.0)
            elif variant == "global_count":
                case.update(keep_rows=[True, True, False, True, True], global_count=11,
                            scale_by_t_squared=False)
            elif variant == "no_labels":
                case.update(labels=None, hard_weight=0.0)
            case["name"] = f"{name}({param}) {variant}"
            labels = None if case["labels"] is None else np.array(case["labels"])
            total, grad, soft, hard, rows = loss(z, v, labels, case)
            check_gradient(z, v, labels, case, grad)
            case.update(total=total, soft=soft, hard=hard, rows=rows.tolist(),
                        grad=grad.flatten().tolist())
            cases.append(case)
    doc = {"generator": "scripts/gen_engine_fixtures.py", "numpy_version": np.__version__,
           "batch": batch, "classes": classes,
           "student_logits": z.flatten().tolist(), "teacher_logits": v.flatten().tolist(),
           "cases": cases}
    OUT.write_text(json.dumps(doc))
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
