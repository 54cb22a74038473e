#!/usr/bin/env python3
"""PyTorch baseline for benches/kd_loss.rs: the same KD loss, forward + backward
with respect to the student logits, f32, on the CPU, eager and torch.compile.

Optional: it needs torch, which CI does not install. To reproduce BENCHMARKS.md:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.15.0
    /tmp/torchenv/bin/python benches/compare_torch.py            # timing table
    /usr/bin/time -v /tmp/torchenv/bin/python benches/compare_torch.py --once eager 512 32000

Timing: each case is warmed up (torch.compile compiles there), then timed over
repeated runs for at least 3 s (at least 10 runs); the median is printed, as
criterion reports for the Rust side.
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
    return statistics.median(times), len(times)


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
    print("| B×C | torch eager | torch.compile |")
    print("|---|---|---|")
    for batch, classes in SIZES:
        eager, n_eager = time_case("eager", batch, classes)
        compiled, n_compiled = time_case("compile", batch, classes)
        print(f"| {batch}×{classes} | {fmt(eager)} (n={n_eager}) | {fmt(compiled)} (n={n_compiled}) |")


if __name__ == "__main__":
    main()
