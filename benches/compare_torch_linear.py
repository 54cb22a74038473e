#!/usr/bin/env python3
"""PyTorch baseline for benches/linear.rs: distillation from hidden states and
output layers (the teacher's too), forward + backward with respect to the
student's hidden states and weight, f32 on the CPU:

- eager, materialised: the full [tokens, vocab] logits, then the KD loss;
- chunked: the Liger-style reference, rows in chunks (128, 256 and 1024 rows —
  Liger's default is 1024 — each timed), each chunk's logits and loss
  differentiated alone and the gradients of the hidden states and weight
  accumulated (torch.autograd.grad per chunk).

Optional (needs torch, which CI does not install):

    /tmp/torchenv/bin/python benches/compare_torch_linear.py            # times
    /usr/bin/time -f %M /tmp/torchenv/bin/python benches/compare_torch_linear.py --once chunked 2048 512 32000 [CHUNK]

Same loss as the Rust side: 0.9 · T² · KL(p‖q) + 0.1 · CE, T = 4, batchmean.
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

T = 4.0
CHUNKS = (128, 256, 1024)


def kd(logits, teacher_logits, labels, count):
    soft = F.kl_div(
        F.log_softmax(logits / T, dim=1),
        F.log_softmax(teacher_logits / T, dim=1),
        log_target=True,
        reduction="sum",
    ) * (T * T)
    hard = F.cross_entropy(logits, labels, reduction="sum")
    return (0.9 * soft + 0.1 * hard) / count


def materialised(h, w, th, tw, labels):
    loss = kd(h @ w, (th @ tw).detach(), labels, h.shape[0])
    loss.backward()
    return loss.detach()


def chunked(h, w, th, tw, labels, chunk=CHUNKS[0]):
    n = h.shape[0]
    total = torch.zeros(())
    gh = torch.zeros_like(h)
    gw = torch.zeros_like(w)
    hd, wd = h.detach(), w.detach()
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        hc = hd[start:end].requires_grad_(True)
        wc = wd.requires_grad_(True)
        with torch.no_grad():
            teacher = th[start:end] @ tw
        loss = kd(hc @ wc, teacher, labels[start:end], n)
        dh, dw = torch.autograd.grad(loss, (hc, wc))
        gh[start:end] = dh
        gw += dw
        total += loss.detach()
    h.grad, w.grad = gh, gw
    return total


def inputs(tokens, d, vocab):
    g = torch.Generator().manual_seed(0)
    scale = 3.0 / d**0.5
    h = torch.randn(tokens, d, generator=g).requires_grad_(True)
    w = (torch.randn(d, vocab, generator=g) * scale).requires_grad_(True)
    th = torch.randn(tokens, d, generator=g)
    tw = torch.randn(d, vocab, generator=g) * scale
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    return h, w, th, tw, labels


def main():
    paths = {"materialised": materialised}
    for chunk in CHUNKS:
        paths[f"chunked_{chunk}"] = lambda *a, chunk=chunk: chunked(*a, chunk=chunk)
    if len(sys.argv) in (6, 7) and sys.argv[1] == "--once":
        path, tokens, d, vocab = sys.argv[2], *map(int, sys.argv[3:6])
        if path == "chunked":
            path = f"chunked_{sys.argv[6] if len(sys.argv) == 7 else CHUNKS[0]}"
            paths[path] = lambda *a: chunked(*a, chunk=int(path.split("_")[1]))
        print(f"{path} {tokens}x{d}x{vocab}: loss {paths[path](*inputs(tokens, d, vocab)).item():.5f}")
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, f32, T={T}")
    tokens, d, vocab = 2048, 512, 32000
    args = inputs(tokens, d, vocab)
    for name, path in paths.items():
        path(*args)  # warm-up
        times = []
        start = time.perf_counter()
        while len(times) < 5 or time.perf_counter() - start < 20.0:
            t0 = time.perf_counter()
            path(*args)
            times.append(time.perf_counter() - t0)
        print(
            f"| torch {name} | {tokens}×{d}×{vocab} | {statistics.mean(times) * 1e3:.0f} ms "
            f"(median {statistics.median(times) * 1e3:.0f} ms, n={len(times)}) |"
        )


if __name__ == "__main__":
    main()
