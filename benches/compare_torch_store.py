"""The PyTorch way of storing a teacher's top-k, side by side with `benches/store.rs`.

What a PyTorch user writes without a store format: the top-k indices (int32), their
log-probabilities (float16) and the tail mass (float32) as tensors, `torch.save`d
once (flushed to disk with fsync, as `TeacherStoreWriter::finish` does), then
`torch.load(mmap=True)` and a shuffled batch fancy-indexed out of the memory map,
converted to int64 / float32 as a loss takes them. No checksums, no header facts.

    /tmp/torchenv/bin/python benches/compare_torch_store.py

Same sizes as the Rust bench: 32,000 classes, k = 8 and 64, writes of 8192 rows,
reads of 256-example batches from a 65,536-row file. Times are means of repeats
(at least 3 s and 10 repeats per case); rows per second are printed.
"""

import os
import tempfile
import time

import torch

VOCAB = 32_000
STORE_ROWS = 65_536
WRITE_ROWS = 8192
BATCH = 256


def timed(fn, min_seconds=3.0, min_runs=10):
    fn()  # warm-up
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_seconds:
        fn()
        runs += 1
    return (time.perf_counter() - start) / runs


def save(path, tensors):
    with open(path, "wb") as f:
        torch.save(tensors, f)
        f.flush()
        os.fsync(f.fileno())


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    logits = torch.randn(1024, VOCAB) * 3.0
    log_p = torch.log_softmax(logits, dim=1)
    generator = torch.Generator().manual_seed(1)
    batches = [
        torch.randperm(STORE_ROWS, generator=generator)[:BATCH] for _ in range(64)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for k in (8, 64):
            values, indices = log_p.topk(k, dim=1)
            tail = (1.0 - values.exp().sum(1)).clamp_min(0.0)
            block = {
                "indices": indices.int(),
                "log_probs": values.half(),
                "tail": tail.float(),
            }
            repeat = lambda rows: {
                name: t.repeat((rows // 1024,) + (1,) * (t.dim() - 1))
                for name, t in block.items()
            }
            path = os.path.join(tmp, f"read-k{k}.pt")
            save(path, repeat(STORE_ROWS))
            size = os.path.getsize(path)
            print(f"k = {k}: {size} bytes for {STORE_ROWS} rows ({size / STORE_ROWS:.1f} per row)")

            to_write = repeat(WRITE_ROWS)
            out = os.path.join(tmp, f"write-k{k}.pt")
            t = timed(lambda: save(out, to_write))
            print(f"torch_save/k{k}: {t * 1e3:.3f} ms per {WRITE_ROWS} rows, {WRITE_ROWS / t:,.0f} rows/s")

            stored = torch.load(path, mmap=True)
            state = {"i": 0}

            def read():
                state["i"] = (state["i"] + 1) % len(batches)
                b = batches[state["i"]]
                return (
                    stored["indices"][b].long(),
                    stored["log_probs"][b].float(),
                    stored["tail"][b],
                )

            t = timed(read)
            print(f"torch_load_mmap_index/k{k}: {t * 1e6:.1f} us per {BATCH} rows, {BATCH / t:,.0f} rows/s")

            t = timed(lambda: torch.load(path, mmap=True))
            print(f"torch_load_mmap_open/k{k}: {t * 1e6:.1f} us")

            live = logits[:BATCH]
            t = timed(lambda: torch.log_softmax(live, dim=1).topk(k, dim=1))
            print(f"live_top_k/k{k}: {t * 1e3:.3f} ms per {BATCH} rows, {BATCH / t:,.0f} rows/s")


if __name__ == "__main__":
    main()
