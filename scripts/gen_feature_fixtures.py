#!/usr/bin/env python3
"""Writes tests/fixtures/feature_torch.json: float64 references for the feature
losses (`burn_distill::feature`), from torchdistill's own loss modules and
PyTorch's functions. The Rust test (tests/suite/feature_parity.rs) only reads
the JSON; CI does not need torch.

Regenerate with:

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.15.0 torchdistill==1.1.5
    /tmp/torchenv/bin/python scripts/gen_feature_fixtures.py

What computes each reference (none of it is burn-distill's code):
- FitNets hints: torchdistill's `SimpleLossWrapper(nn.MSELoss())` — the form
  its FitNets configs use — between the output of a `nn.Conv2d(c_s, c_t, 1)`
  regressor (`nn.Linear` for `[batch, c]` features, `nn.Conv1d` for
  `[batch, c, length]`) and the teacher's features. The per-example values are
  `F.mse_loss(..., reduction="none").flatten(1).mean(1)`.
- Attention transfer: torchdistill's `ATLoss` with one pair, `mode="code"` and
  `mode="paper"`; its `attention_transfer` for the maps; per-example values
  from its maps (`(a_s - a_t).pow(2).mean(1)` and `torch.norm(a_s - a_t, dim=1)`,
  the terms its two modes average).
- RKD: torchdistill's `RKDLoss` (`reduction="mean"`), and its
  `compute_rkd_distance_loss` / `compute_rkd_angle_loss` for the two terms.
- Hidden states: `F.mse_loss(..., reduction="none").mean(-1)` and
  `1 - F.cosine_similarity(s, t, dim=-1)`, after a `nn.Linear` projection.

Gradients are torch.autograd's, with respect to the student's features and
the regressor's / projection's weight and bias. Inputs are drawn in float64,
rounded to float32 (so the f32 side reads exactly what the reference saw),
and computed in float64. Weights are written as burn's `Linear` stores them,
`[in, out]` (the transpose of PyTorch's).
"""

import json
import pathlib

import torch
import torch.nn.functional as F
import torchdistill
from torch import nn
from torchdistill.losses.mid_level import ATLoss, RKDLoss, SimpleLossWrapper

torch.manual_seed(20261204)
torch.set_default_dtype(torch.float64)


def draw(*shape, scale=1.0):
    """Normal values, rounded to float32, held in float64."""
    return (torch.randn(*shape) * scale).float().double()


def flat(tensor):
    return [float(v) for v in tensor.detach().reshape(-1).tolist()]


def leaf(tensor):
    return tensor.clone().requires_grad_(True)


def hint_case(name, student_shape, teacher_channels, bias=True, scale=1.0):
    student = leaf(draw(*student_shape, scale=scale))
    teacher = draw(student_shape[0], teacher_channels, *student_shape[2:], scale=scale)
    c_s = student_shape[1]
    rank = len(student_shape)
    layer = {2: nn.Linear, 3: lambda i, o, bias: nn.Conv1d(i, o, 1, bias=bias),
             4: lambda i, o, bias: nn.Conv2d(i, o, 1, bias=bias)}[rank](c_s, teacher_channels, bias=bias)
    with torch.no_grad():
        weight = draw(teacher_channels, c_s, scale=c_s ** -0.5)
        layer.weight.copy_(weight.reshape(layer.weight.shape))
        if bias:
            layer.bias.copy_(draw(teacher_channels, scale=0.1))
    wrapper = SimpleLossWrapper(
        nn.MSELoss(),
        input={"is_from_teacher": False, "module_path": "regressor", "io": "output"},
        target={"is_from_teacher": True, "module_path": "hint", "io": "output"},
    )
    regressed = layer(student)
    loss = wrapper({"regressor": {"output": regressed}}, {"hint": {"output": teacher}}, None)
    per_example = F.mse_loss(regressed, teacher, reduction="none").flatten(1).mean(1)
    loss.backward()
    return {
        "name": name,
        "student_shape": list(student_shape),
        "teacher_shape": list(teacher.shape),
        "student": flat(student),
        "teacher": flat(teacher),
        "weight": flat(layer.weight.detach().reshape(teacher_channels, c_s).t()),
        "bias": flat(layer.bias) if bias else None,
        "loss": float(loss.detach()),
        "per_example": flat(per_example),
        "grad_student": flat(student.grad),
        "grad_weight": flat(layer.weight.grad.reshape(teacher_channels, c_s).t()),
        "grad_bias": flat(layer.bias.grad) if bias else None,
    }


def at_case(name, student_shape, teacher_channels, scale=1.0, zero_example=False):
    student = draw(*student_shape, scale=scale)
    teacher = draw(student_shape[0], teacher_channels, *student_shape[2:], scale=scale)
    if zero_example:
        # An example whose student features are all 0: its map is 0 (the
        # normalisation's floor), its gradient finite.
        student[0] = 0.0
    pairs = {"pair": {"student": {"io": "output", "path": "layer"},
                      "teacher": {"io": "output", "path": "layer"}, "weight": 1}}
    out = {
        "name": name,
        "student_shape": list(student_shape),
        "teacher_shape": list(teacher.shape),
        "student": flat(student),
        "teacher": flat(teacher),
        "student_map": flat(ATLoss.attention_transfer(student)),
    }
    for mode in ("code", "paper"):
        s = leaf(student)
        loss = ATLoss(pairs, mode=mode)({"layer": {"output": s}}, {"layer": {"output": teacher}})
        loss.backward()
        a_s = ATLoss.attention_transfer(student)
        a_t = ATLoss.attention_transfer(teacher)
        if mode == "code":
            per_example = (a_s - a_t).pow(2).mean(1)
        else:
            per_example = torch.norm(a_s - a_t, dim=1)
        out[mode] = {"loss": float(loss.detach()), "per_example": flat(per_example),
                     "grad_student": flat(s.grad)}
    return out


def rkd_case(name, student_shape, teacher_shape, scale=1.0, duplicate=False):
    student = draw(*student_shape, scale=scale)
    teacher = draw(*teacher_shape, scale=scale)
    if duplicate:
        # Two equal student embeddings: a distance at the floor, an angle's
        # direction undefined; the gradient stays finite.
        student[1] = student[0]
    out = {
        "name": name,
        "student_shape": list(student_shape),
        "teacher_shape": list(teacher_shape),
        "student": flat(student),
        "teacher": flat(teacher),
        "weighted": [],
    }
    rkd = RKDLoss("s", "t", dist_factor=1.0, angle_factor=1.0, reduction="mean")
    for term, method in (("distance", rkd.compute_rkd_distance_loss),
                         ("angle", rkd.compute_rkd_angle_loss)):
        s = leaf(student)
        value = method(teacher.flatten(1), s.flatten(1))
        value.backward()
        out[term] = {"loss": float(value.detach()), "grad_student": flat(s.grad)}
    for dist_factor, angle_factor in ((1.0, 2.0), (25.0, 50.0), (1.0, 0.0), (0.0, 1.0)):
        s = leaf(student)
        loss = RKDLoss("s", "t", dist_factor, angle_factor, reduction="mean")(
            {"s": {"output": s}}, {"t": {"output": teacher}})
        loss.backward()
        out["weighted"].append({"distance_weight": dist_factor, "angle_weight": angle_factor,
                                "loss": float(loss.detach()), "grad_student": flat(s.grad)})
    return out


def hidden_case(name, shape, teacher_width, scale=1.0):
    student = leaf(draw(*shape, scale=scale))
    teacher = draw(*shape[:-1], teacher_width, scale=scale)
    width = shape[-1]
    projection = nn.Linear(width, teacher_width)
    with torch.no_grad():
        projection.weight.copy_(draw(teacher_width, width, scale=width ** -0.5))
        projection.bias.copy_(draw(teacher_width, scale=0.1))
    out = {
        "name": name,
        "student_shape": list(shape),
        "teacher_shape": list(teacher.shape),
        "student": flat(student),
        "teacher": flat(teacher),
        "weight": flat(projection.weight.detach().t()),
        "bias": flat(projection.bias),
    }
    for kind in ("mse", "cosine"):
        projection.zero_grad()
        student.grad = None
        projected = projection(student)
        if kind == "mse":
            per_position = F.mse_loss(projected, teacher, reduction="none").mean(-1)
        else:
            per_position = 1.0 - F.cosine_similarity(projected, teacher, dim=-1)
        loss = per_position.mean()
        loss.backward()
        out[kind] = {
            "loss": float(loss.detach()),
            "per_position": flat(per_position),
            "grad_student": flat(student.grad),
            "grad_weight": flat(projection.weight.grad.t()),
            "grad_bias": flat(projection.bias.grad),
        }
    return out


fixtures = {
    "torch_version": torch.__version__,
    "torchdistill_version": torchdistill.__version__,
    "hint": [
        hint_case("conv 2x3x4x5 to 6 channels", (2, 3, 4, 5), 6),
        hint_case("conv 3x5x2x2 to 2 channels, no bias", (3, 5, 2, 2), 2, bias=False),
        hint_case("linear 4x3 to 7", (4, 3), 7),
        hint_case("conv1d 2x4x6 to 3, large", (2, 4, 6), 3, scale=30.0),
    ],
    "attention": [
        at_case("3x4x5x6 vs 7 channels", (3, 4, 5, 6), 7),
        at_case("2x3x4x4 vs 3 channels, a zero example", (2, 3, 4, 4), 3, zero_example=True),
        at_case("2x2x7 (1-d maps) vs 5 channels, large", (2, 2, 7), 5, scale=50.0),
    ],
    "rkd": [
        rkd_case("6x5 vs 6x9", (6, 5), (6, 9)),
        rkd_case("5x2x3x2 vs 5x3x2x2", (5, 2, 3, 2), (5, 3, 2, 2)),
        rkd_case("7x4 vs 7x3, two equal students", (7, 4), (7, 3), duplicate=True),
        rkd_case("2x3 vs 2x3", (2, 3), (2, 3)),
        rkd_case("8x6 vs 8x6, large", (8, 6), (8, 6), scale=100.0),
    ],
    "hidden": [
        hidden_case("2x3x4 to 6", (2, 3, 4), 6),
        hidden_case("5x3 to 3", (5, 3), 3),
    ],
}

path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "feature_torch.json"
path.write_text(json.dumps(fixtures, indent=1) + "\n")
print(f"wrote {path}")
