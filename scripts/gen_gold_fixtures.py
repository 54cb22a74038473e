#!/usr/bin/env python3
"""Writes tests/fixtures/gold_trl.json: references for GOLD's cross-tokenizer
loss (TRL's `ULDLoss` with `use_extended_uld=True`: byte-offset span alignment,
merged span probabilities, sorted L1), value and gradient with respect to the
student logits, from TRL's own implementation.

    /tmp/torchenv/bin/python -m pip install torch numpy trl==1.16.0
    /tmp/torchenv/bin/python scripts/gen_gold_fixtures.py

Two sequences tokenized two ways (student and teacher vocabularies of different
sizes, a prompt of different length before each answer, a zero-width teacher
EOS at one answer's end, which has no student counterpart), for both token
merge strategies ("observed", "bayesian") and two temperature pairs; TRL's plain
loss and its hybrid (generalised JSD on the ids whose strings both vocabularies
share, from tokenizer stand-ins whose `get_vocab()` returns the fixture's
vocabularies, and ULD on the rest; adaptive and fixed weights), cross-entropy
weight 0, no EOS skipped. The fixture records
what the crate's `Tokenization` needs: each answer's first row (the answer's
start for "observed", one row earlier for "bayesian", as TRL slices), its tokens
and its byte offsets.
"""

import json
import os
import pathlib
import types

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
import trl
from trl.experimental.gold.gold_trainer import ULDLoss

torch.set_default_dtype(torch.float64)
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gold_trl.json"

# Per sequence: (prompt length, answer tokens' byte offsets) for each side.
STUDENT = [
    (1, [[0, 3], [3, 7], [7, 11]]),            # "the", " cat", " sat"
    (2, [[0, 1], [1, 2], [2, 4]]),             # "a", "b", "cd"
]
TEACHER = [
    (2, [[0, 2], [2, 3], [3, 5], [5, 7], [7, 11]]),  # "th", "e", " c", "at", " sat"
    (1, [[0, 2], [2, 3], [3, 4], [4, 4]]),           # "ab", "c", "d", EOS
]
VS, VT, SEQ_S, SEQ_T = 6, 9, 6, 8
# The vocabularies' strings, for the hybrid loss: "a", "c" and " sat" are in both
# (student ids 0, 4, 5; teacher ids 8, 6, 4).
STUDENT_VOCAB = {"a": 0, "b": 1, "cd": 2, "the": 3, "c": 4, " sat": 5}
TEACHER_VOCAB = {"th": 0, "e": 1, " c": 2, "at": 3, " sat": 4, "ab": 5, "c": 6, "d": 7, "a": 8}


def side(layout, seq, vocab, gen):
    b = len(layout)
    labels = torch.full((b, seq), -100, dtype=torch.long)
    ids = torch.randint(0, vocab, (b, seq), generator=gen)
    offsets = torch.zeros((b, seq, 2), dtype=torch.long)
    for i, (prompt, answer) in enumerate(layout):
        n = len(answer)
        labels[i, prompt:prompt + n] = ids[i, prompt:prompt + n]
        offsets[i, prompt:prompt + n] = torch.tensor(answer)
    return labels, ids, offsets


def main():
    gen = torch.Generator().manual_seed(29)
    s_labels, s_ids, s_off = side(STUDENT, SEQ_S, VS, gen)
    t_labels, t_ids, t_off = side(TEACHER, SEQ_T, VT, gen)
    z = torch.randn(2, SEQ_S, VS, generator=gen) * 2
    v = torch.randn(2, SEQ_T, VT, generator=gen) * 2
    enc = lambda t: t.flatten().tolist()
    doc = {"generator": "scripts/gen_gold_fixtures.py", "trl_version": trl.__version__,
           "torch_version": torch.__version__, "batch": 2,
           "student_shape": [2, SEQ_S, VS], "teacher_shape": [2, SEQ_T, VT],
           "student_logits": enc(z), "teacher_logits": enc(v), "sequences": [], "cases": []}
    for i in range(2):
        s_prompt, s_answer = STUDENT[i]
        t_prompt, t_answer = TEACHER[i]
        doc["sequences"].append({
            "student_start": s_prompt, "student_tokens": s_ids[i, s_prompt:s_prompt + len(s_answer)].tolist(),
            "student_offsets": s_answer,
            "teacher_start": t_prompt, "teacher_tokens": t_ids[i, t_prompt:t_prompt + len(t_answer)].tolist(),
            "teacher_offsets": t_answer,
        })
    doc["student_vocabulary"] = STUDENT_VOCAB
    doc["teacher_vocabulary"] = TEACHER_VOCAB
    cases = [(merge, ts, tt, None) for merge in ["observed", "bayesian"]
             for ts, tt in [(1.0, 1.0), (2.0, 1.5)]]
    # The hybrid loss: TRL's adaptive weights (matched ids' share of the teacher's
    # vocabulary) at its default beta, and fixed weights at another beta.
    cases += [("observed", 1.0, 1.0, {"beta": 0.5, "weights": None}),
              ("bayesian", 2.0, 1.5, {"beta": 0.1, "weights": [0.7, 0.3]})]
    tokenizer = lambda vocab: types.SimpleNamespace(get_vocab=lambda: dict(vocab))
    for merge, ts, tt, hybrid in cases:
        config = types.SimpleNamespace(
            uld_crossentropy_weight=0.0, uld_distillation_weight=1.0,
            uld_student_temperature=ts, uld_teacher_temperature=tt,
            uld_skip_student_eos=False, uld_skip_teacher_eos=False,
            use_extended_uld=True, uld_token_merge_strategy=merge,
            uld_use_hybrid_loss=hybrid is not None,
            uld_hybrid_matched_weight=hybrid["weights"][0] if hybrid and hybrid["weights"] else None,
            uld_hybrid_unmatched_weight=hybrid["weights"][1] if hybrid and hybrid["weights"] else None,
            beta=hybrid["beta"] if hybrid else 0.5)
        loss = ULDLoss(config, tokenizer(STUDENT_VOCAB), tokenizer(TEACHER_VOCAB))
        zz = z.clone().requires_grad_(True)
        value = loss(zz, v, s_labels, t_labels, s_ids, t_ids, s_off, t_off)
        (grad,) = torch.autograd.grad(value, zz)
        doc["cases"].append({"merge": merge, "student_temperature": ts,
                             "teacher_temperature": tt, "hybrid": hybrid,
                             "value": float(value.detach()), "grad": enc(grad)})
    OUT.write_text(json.dumps(doc))
    print(f"wrote {len(doc['cases'])} cases to {OUT} (TRL {trl.__version__})")


if __name__ == "__main__":
    main()
