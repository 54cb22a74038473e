#!/usr/bin/env python3
"""PyTorch baseline for benches/kd_loss.rs: the same KD loss, forward + backward
with respect to the student logits, f32, on the CPU, eager and torch.compile.

Optional: it needs torch, which CI does not install. To reproduce BENCHMARKS.md:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.15.0
    /tmp/torchenv/bin/python benches/compare_torch.py            # timing table
    /usr/bin/time -v /tmp/torchenv/bin/python benches/compare_torch.py --once eager 512 32000

Timing: each case is warmed up (torch.compile compiles there), then timed over
repeated runs for at least 3 s (at least 10 runs). The mean time per run is
printed first — criterion's point estimate for the Rust side is a mean per
iteration too — and the median after it. Torch's thread count is in the header;
the Rust benches print the threads they may use.
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

T = 4.0
SIZES = [(128, 10), (256, 1000), (64, 32000), (512, 32000)]


def kd_loss(student, teacher, targets):
    soft = F.kl_div(
        F.log_softmax(student / T, dim=1),
        F.log_softmax(teacher / T, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (T * T)
    hard = F.cross_entropy(student, targets)
    return 0.9 * soft + 0.1 * hard


def make_step(mode):
    loss_fn = torch.compile(kd_loss) if mode == "compile" else kd_loss

    def step(student, teacher, targets):
        z = student.detach().requires_grad_(True)
        loss = loss_fn(z, teacher, targets)
        loss.backward()
        return z.grad

    return step


def inputs(batch, classes):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(batch, classes, generator=g) * 3.0
    teacher = torch.randn(batch, classes, generator=g) * 3.0
    targets = torch.randint(0, classes, (batch,), generator=g)
    return student, teacher, targets


def time_case(mode, batch, classes):
    step = make_step(mode)
    args = inputs(batch, classes)
    for _ in range(3):
        step(*args)
    times = []
    start = time.perf_counter()
    while len(times) < 10 or time.perf_counter() - start < 3.0:
        t0 = time.perf_counter()
        step(*args)
        times.append(time.perf_counter() - t0)
    return statistics.mean(times), statistics.median(times), len(times)


def fmt(seconds):
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.3f} s"


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--once":
        mode, batch, classes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        grad = make_step(mode)(*inputs(batch, classes))
        print(f"{mode} {batch}x{classes}: sum|grad| {grad.abs().sum().item():.4f}")
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, f32, T={T}"
    )
    print("| B×C | torch eager: mean (median) | torch.compile: mean (median) |")
    print("|---|---|---|")
    for batch, classes in SIZES:
        cells = []
        for mode in ["eager", "compile"]:
            mean, median, n = time_case(mode, batch, classes)
            cells.append(f"{fmt(mean)} ({fmt(median)}, n={n})")
        print(f"| {batch}×{classes} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
