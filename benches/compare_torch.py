#!/usr/bin/env python3
"""PyTorch baseline for benches/kd_loss.rs: the same KD loss, forward + backward
with respect to the student logits, f32, on the CPU, eager and torch.compile.
With --divergences, the baseline for benches/divergences.rs instead: every
divergence as TRL, DistiLLM, MiniLLM and DistillKit write it, DKD as mdistiller
writes it, and a top-64 teacher with a tail bucket, each with the same hard
cross-entropy term and weights as the Rust side (0.9 soft, 0.1 hard, T = 4).
With --lm, the baseline for benches/lm_step.rs's loss cases: forward KL,
MiniLLM's reverse KL and TRL's JSD (β = 0.5) at 992 × 4096, T = 1,
0.5 soft + 0.5 hard, as the lm_distill example's rows.

Optional: it needs torch, which CI does not install. To reproduce BENCHMARKS.md:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.15.0
    /tmp/torchenv/bin/python benches/compare_torch.py            # timing table
    /usr/bin/time -v /tmp/torchenv/bin/python benches/compare_torch.py --once eager 512 32000
    /tmp/torchenv/bin/python benches/compare_torch.py --divergences   # divergences table
    /tmp/torchenv/bin/python benches/compare_torch.py --uld   # its ULD rows alone
    /tmp/torchenv/bin/python benches/compare_torch.py --lm   # benches/lm_step.rs's loss cases

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


def with_hard(soft_fn):
    """0.9 · T² · soft + 0.1 · CE, the weights and scaling of the Rust side."""

    def loss(student, teacher, targets):
        soft = soft_fn(student / T, teacher / T) * (T * T)
        return 0.9 * soft + 0.1 * F.cross_entropy(student, targets)

    return loss


def trl_jsd(beta, normalized=False):
    """TRL's GKDTrainer.generalized_jsd_loss (batchmean), optionally ÷ β(1−β)."""

    def soft(s, t):
        student_log_probs = F.log_softmax(s, dim=-1)
        teacher_log_probs = F.log_softmax(t, dim=-1)
        b = torch.tensor(beta, dtype=student_log_probs.dtype)
        mixture_log_probs = torch.logsumexp(
            torch.stack([student_log_probs + torch.log(1 - b), teacher_log_probs + torch.log(b)]),
            dim=0,
        )
        kl_teacher = F.kl_div(mixture_log_probs, teacher_log_probs, reduction="none", log_target=True)
        kl_student = F.kl_div(mixture_log_probs, student_log_probs, reduction="none", log_target=True)
        jsd = b * kl_teacher + (1 - b) * kl_student
        jsd = jsd.sum() / jsd.size(0)
        return jsd / (beta * (1 - beta)) if normalized else jsd

    return soft


def forward_kl(s, t):
    return F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), log_target=True, reduction="batchmean")


def minillm_reverse_kl(s, t):
    """DistiLLM's / MiniLLM's reverse_kl (token mean; here every row counts)."""
    student_probs = F.softmax(s, dim=-1, dtype=torch.float32)
    student_logprobs = F.log_softmax(s, dim=-1, dtype=torch.float32)
    teacher_logprobs = F.log_softmax(t, dim=-1, dtype=torch.float32)
    inf_mask = torch.isinf(t) | torch.isinf(s)
    prod_probs = torch.masked_fill(student_probs * teacher_logprobs, inf_mask, 0)
    prod_probs -= torch.masked_fill(student_probs * student_logprobs, inf_mask, 0)
    return -torch.sum(prod_probs, dim=-1).mean()


def distillm_skewed_forward_kl(lam):
    """DistiLLM's skewed_forward_kl (a cross-entropy to the mixture: the skew KL
    less the teacher's entropy, the same gradient)."""

    def soft(s, t):
        teacher_probs = F.softmax(t, dim=-1, dtype=torch.float32)
        student_probs = F.softmax(s, dim=-1, dtype=torch.float32)
        mixed_probs = lam * teacher_probs + (1 - lam) * student_probs
        mixed_logprobs = torch.log(mixed_probs)
        inf_mask = torch.isinf(s)
        prod_probs = torch.masked_fill(teacher_probs * mixed_logprobs, inf_mask, 0)
        return -torch.sum(prod_probs, dim=-1).mean()

    return soft


def distillm_skewed_reverse_kl(lam):
    """DistiLLM's skewed_reverse_kl."""

    def soft(s, t):
        teacher_probs = F.softmax(t, dim=-1, dtype=torch.float32)
        student_probs = F.softmax(s, dim=-1, dtype=torch.float32)
        mixed_probs = (1 - lam) * teacher_probs + lam * student_probs
        student_logprobs = F.log_softmax(s, dim=-1, dtype=torch.float32)
        mixed_logprobs = torch.log(mixed_probs)
        inf_mask = torch.isinf(s)
        prod_probs = torch.masked_fill(student_probs * mixed_logprobs, inf_mask, 0)
        prod_probs -= torch.masked_fill(student_probs * student_logprobs, inf_mask, 0)
        return -torch.sum(prod_probs, dim=-1).mean()

    return soft


def distillkit_tvd(s, t):
    """DistillKit's total variation: ½ Σ |q − p|, batch mean."""
    return 0.5 * (F.softmax(s, dim=-1) - F.softmax(t, dim=-1)).abs().sum(-1).mean()


def trl_uld(s, t):
    """TRL's ULDLoss (GOLD) on one token per row: the L1 distance between the sorted
    probabilities, summed over classes, averaged over the rows."""
    q = F.softmax(s, dim=-1).sort(dim=-1, descending=True).values
    p = F.softmax(t, dim=-1).sort(dim=-1, descending=True).values
    return F.l1_loss(q, p, reduction="sum") / s.size(0)


def mdistiller_dkd(student, teacher, targets, alpha=1.0, beta=8.0):
    """mdistiller's dkd_loss (its CIFAR defaults α = 1, β = 8, T = 4), no hard term,
    as burn-distill's DkdLoss."""
    gt_mask = torch.zeros_like(student).scatter_(1, targets.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(student).scatter_(1, targets.unsqueeze(1), 0).bool()

    def cat_mask(x):
        return torch.cat([(x * gt_mask).sum(1, keepdims=True), (x * other_mask).sum(1, keepdims=True)], 1)

    pred_student = cat_mask(F.softmax(student / T, dim=1))
    pred_teacher = cat_mask(F.softmax(teacher / T, dim=1))
    tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="sum") * T**2 / targets.shape[0]
    pred_teacher_part2 = F.softmax(teacher / T - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(student / T - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * T**2 / targets.shape[0]
    return alpha * tckd + beta * nckd


def top_k_kd(k):
    """Forward KL over a stored top-k teacher plus a tail bucket (DistillKit's
    sparse form), with the hard term; the teacher's top-k is made outside the
    timed step, as on the Rust side."""

    def loss(student, teacher_top, targets):
        indices, teacher_log_probs = teacher_top
        log_q = F.log_softmax(student / T, dim=1)
        student_top = log_q.gather(1, indices)
        student_tail = torch.log1p(-student_top.exp().sum(1, keepdim=True).clamp(max=1 - 1e-7))
        teacher_tail = torch.log1p(-teacher_log_probs.exp().sum(1, keepdim=True).clamp(max=1 - 1e-7))
        s = torch.cat([student_top, student_tail], 1)
        t = torch.cat([teacher_log_probs, teacher_tail], 1)
        soft = F.kl_div(s, t, log_target=True, reduction="batchmean") * (T * T)
        return 0.9 * soft + 0.1 * F.cross_entropy(student, targets)

    return loss


DIVERGENCES = [
    ("forward_kl", with_hard(forward_kl)),
    ("reverse_kl", with_hard(minillm_reverse_kl)),
    ("jsd_0.5", with_hard(trl_jsd(0.5))),
    ("jsd_normalized_0.1", with_hard(trl_jsd(0.1, normalized=True))),
    ("skew_forward_kl_0.1", with_hard(distillm_skewed_forward_kl(0.1))),
    ("skew_reverse_kl_0.1", with_hard(distillm_skewed_reverse_kl(0.1))),
    ("tvd", with_hard(distillkit_tvd)),
    ("uld", with_hard(trl_uld)),
    ("dkd", mdistiller_dkd),
    ("sparse_top64", top_k_kd(64)),
]
DIVERGENCE_SIZES = [(64, 32000), (512, 32000)]


def lm_with_hard(soft_fn):
    """The lm_distill example's rows: T = 1, 0.5 · soft + 0.5 · CE."""

    def loss(student, teacher, targets):
        return 0.5 * soft_fn(student, teacher) + 0.5 * F.cross_entropy(student, targets)

    return loss


# benches/lm_step.rs's loss cases: 32 sequences × 31 scored tokens, vocabulary 4,096.
LM_LOSSES = [
    ("fkl", lm_with_hard(forward_kl)),
    ("rkl", lm_with_hard(minillm_reverse_kl)),
    ("jsd", lm_with_hard(trl_jsd(0.5))),
]
LM_SIZE = (32 * 31, 4096)


def make_step(mode, loss=kd_loss):
    loss_fn = torch.compile(loss) if mode == "compile" else loss

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


def time_case(mode, batch, classes, loss=kd_loss, args=None):
    step = make_step(mode, loss)
    args = args or inputs(batch, classes)
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


def divergences(only=None):
    """The table for benches/divergences.rs (`only`: one loss's rows)."""
    print("| loss | B×C | torch eager: mean (median) | torch.compile: mean (median) |")
    print("|---|---|---|---|")
    for name, loss in DIVERGENCES:
        if only is not None and name != only:
            continue
        for batch, classes in DIVERGENCE_SIZES:
            student, teacher, targets = inputs(batch, classes)
            if name.startswith("sparse_top"):
                top = F.log_softmax(teacher / T, dim=1).topk(64, dim=1)
                teacher = (top.indices, top.values)
            cells = []
            for mode in ["eager", "compile"]:
                torch._dynamo.reset()  # each case compiles for its own shapes
                mean, median, n = time_case(mode, batch, classes, loss, (student, teacher, targets))
                cells.append(f"{fmt(mean)} ({fmt(median)}, n={n})")
            print(f"| {name} | {batch}×{classes} | {cells[0]} | {cells[1]} |", flush=True)


def lm_losses():
    """The table for benches/lm_step.rs's loss cases."""
    batch, classes = LM_SIZE
    g = torch.Generator().manual_seed(0)
    student = torch.randn(batch, classes, generator=g) * 2.0
    teacher = torch.randn(batch, classes, generator=g) * 2.0
    targets = torch.randint(4, classes, (batch,), generator=g)
    print("| loss | rows×vocab | torch eager: mean (median) | torch.compile: mean (median) |")
    print("|---|---|---|---|")
    for name, loss in LM_LOSSES:
        cells = []
        for mode in ["eager", "compile"]:
            torch._dynamo.reset()
            mean, median, n = time_case(mode, batch, classes, loss, (student, teacher, targets))
            cells.append(f"{fmt(mean)} ({fmt(median)}, n={n})")
        print(f"| {name} | {batch}×{classes} | {cells[0]} | {cells[1]} |", flush=True)


def header(setting):
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, f32, {setting}"
    )


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--lm":
        header("T=1, 0.5 soft + 0.5 hard")
        lm_losses()
        return
    if len(sys.argv) == 2 and sys.argv[1] == "--divergences":
        header(f"T={T}")
        divergences()
        return
    if len(sys.argv) == 2 and sys.argv[1] == "--uld":
        header(f"T={T}")
        divergences(only="uld")
        return
    if len(sys.argv) == 5 and sys.argv[1] == "--once":
        mode, batch, classes = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        grad = make_step(mode)(*inputs(batch, classes))
        print(f"{mode} {batch}x{classes}: sum|grad| {grad.abs().sum().item():.4f}")
        return
    header(f"T={T}")
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
