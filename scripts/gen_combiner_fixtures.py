#!/usr/bin/env python3
"""Writes tests/fixtures/combiner_torch.json: reference solutions of eq. 5 of Hinton
et al. (2015), the generalist/specialist combination, for tests/specialists.rs.

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.15.0
    /tmp/torchenv/bin/python scripts/gen_combiner_fixtures.py

Independent of the crate's EM solver: q = softmax(r) is optimised directly with
torch's L-BFGS in float64 (as the paper suggests, gradient descent on r), from
r = 0, to a gradient norm below 1e-13. The active specialists of each row are
those whose subset contains one of the generalist's top-n classes.
"""

import json
import pathlib

import torch

torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "combiner_torch.json"


def kl(p, q):
    # 0 log 0 = 0
    return torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum(-1)


def collapse(q, subset):
    inside = q[subset]
    return torch.cat([inside, (q.sum() - inside.sum()).reshape(1)])


def solve_row(pg, specs, active):
    r = torch.zeros_like(pg, requires_grad=True)
    opt = torch.optim.LBFGS([r], lr=1, max_iter=5000, tolerance_grad=1e-13,
                            tolerance_change=1e-16, history_size=50, line_search_fn="strong_wolfe")

    def objective():
        q = torch.softmax(r, 0)
        j = kl(pg, q)
        for (subset, pm), a in zip(specs, active):
            if a:
                j = j + kl(pm, collapse(q, subset))
        return j

    def closure():
        opt.zero_grad()
        j = objective()
        j.backward()
        return j

    for _ in range(5):
        opt.step(closure)
    with torch.no_grad():
        q = torch.softmax(r, 0)
        return q, objective().item()


def case(name, seed, batch, classes, subsets, top_n, sharpness=2.0):
    # burn-distill's ClassSubset keeps classes in increasing order: output k of a
    # specialist is the k-th smallest class of its subset, the dustbin is last.
    subsets = [sorted(s) for s in subsets]
    g = torch.Generator().manual_seed(seed)
    f32 = lambda x: x.float().double()
    pg = f32(torch.softmax(torch.randn(batch, classes, generator=g) * sharpness, 1))
    pg = pg / pg.sum(1, keepdim=True)
    spec_probs = []
    for subset in subsets:
        pm = f32(torch.softmax(torch.randn(batch, len(subset) + 1, generator=g) * sharpness, 1))
        spec_probs.append(pm / pm.sum(1, keepdim=True))
    top = torch.topk(pg, top_n, dim=1).indices
    q_all, j_all, active_all = [], [], []
    for b in range(batch):
        active = [any(int(c) in set(s) for c in top[b]) for s in subsets]
        specs = [(torch.tensor(s), spec_probs[m][b]) for m, s in enumerate(subsets)]
        q, j = solve_row(pg[b], specs, active)
        q_all.append(q.tolist())
        j_all.append(j)
        active_all.append([1.0 if a else 0.0 for a in active])
    return {
        "name": name,
        "batch": batch,
        "classes": classes,
        "top_n": top_n,
        "subsets": subsets,
        "generalist_probs": pg.flatten().tolist(),
        "specialist_probs": [p.flatten().tolist() for p in spec_probs],
        "active": active_all,
        "q": q_all,
        "objective": j_all,
    }


def main():
    cases = [
        case("disjoint_top1", 1, 8, 12, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]], 1),
        case("overlapping_top2", 2, 8, 10, [[0, 1, 2, 3, 4], [3, 4, 5, 6], [6, 7, 8, 9, 0], [1, 5]], 2),
        case("single_class_specialists", 3, 6, 6, [[0], [1], [2, 3]], 3, sharpness=1.0),
        case("sharp_top1", 4, 6, 20, [list(range(0, 8)), list(range(6, 14)), list(range(12, 20))], 1, sharpness=4.0),
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"generator": "scripts/gen_combiner_fixtures.py",
                               "torch_version": torch.__version__, "cases": cases}))
    print(f"wrote {len(cases)} cases to {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
