#!/usr/bin/env python3
"""PyTorch baseline for benches/features.rs: torchdistill's forms of the same
feature losses at the same shapes, forward + backward with respect to the
student's features (and the regressor / projection), f32 on the CPU, eager and
torch.compile.

- hint: `nn.Conv2d(64, 128, 1)` then `F.mse_loss` (torchdistill's FitNets
  configs: `SimpleLossWrapper(MSELoss)` after the regressor),
  [64, 64, 16, 16] student, [64, 128, 16, 16] teacher
- attention_code / attention_paper: torchdistill's `ATLoss` (mode "code" /
  "paper"), the same maps
- rkd: torchdistill's `RKDLoss` (dist_factor 1, angle_factor 2), [128, 512]
  student, [128, 2048] teacher
- hidden_cosine: `nn.Linear(512, 768)` then `1 - F.cosine_similarity` averaged,
  [8, 256, 512] student, [8, 256, 768] teacher

Optional (CI does not install torch):

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.15.0 torchdistill==1.1.5
    /tmp/torchenv/bin/python benches/compare_torch_features.py

Timing as benches/compare_torch.py: warm-up (compilation there), then at least
3 s and 10 runs; mean (median).
"""

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchdistill.losses.mid_level import ATLoss, RKDLoss

torch.manual_seed(0)


def at(mode):
    pairs = {"pair": {"student": {"io": "output", "path": "s"},
                      "teacher": {"io": "output", "path": "t"}, "weight": 1}}
    loss = ATLoss(pairs, mode=mode)
    return lambda s, t: loss({"s": {"output": s}}, {"t": {"output": t}})


def rkd():
    loss = RKDLoss("s", "t", dist_factor=1.0, angle_factor=2.0, reduction="mean")
    return lambda s, t: loss({"s": {"output": s}}, {"t": {"output": t}})


def cases():
    maps_s, maps_t = torch.randn(64, 64, 16, 16), torch.randn(64, 128, 16, 16)
    regressor = nn.Conv2d(64, 128, 1)
    projection = nn.Linear(512, 768)
    return [
        ("hint/64x64x16x16_to_128", lambda s, t: F.mse_loss(regressor(s), t), maps_s, maps_t),
        ("attention_code/64x64x16x16_vs_128", at("code"), maps_s, maps_t),
        ("attention_paper/64x64x16x16_vs_128", at("paper"), maps_s, maps_t),
        ("rkd/128x512_vs_2048", rkd(), torch.randn(128, 512), torch.randn(128, 2048)),
        ("hidden_cosine/8x256x512_to_768",
         lambda s, t: (1.0 - F.cosine_similarity(projection(s), t, dim=-1)).mean(),
         torch.randn(8, 256, 512), torch.randn(8, 256, 768)),
    ]


def time_case(loss, student, teacher):
    def step():
        s = student.detach().requires_grad_(True)
        loss(s, teacher).backward()
        return s.grad

    for _ in range(3):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < 10 or time.perf_counter() - start < 3.0:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.mean(times), statistics.median(times)


def main():
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| loss | torch eager: mean (median) | torch.compile: mean (median) |")
    print("|---|---|---|")
    for name, loss, student, teacher in cases():
        cells = []
        for mode in ("eager", "compile"):
            torch._dynamo.reset()
            fn = torch.compile(loss) if mode == "compile" else loss
            mean, median = time_case(fn, student, teacher)
            cells.append(f"{mean * 1e3:.3f} ms ({median * 1e3:.3f} ms)")
        print(f"| {name} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
