#!/usr/bin/env python3
"""`dprune embed` throughput vs raw onnxruntime (../shared/bench/ort_raw.py), same run.

    pip install onnxruntime tokenizers numpy pyarrow
    cargo build --release
    python benches/embed.py            # MiniLM, CPU, batch 64, 10,000 captions, 2 threads

Both sides read the same Parquet of N synthetic captions (ort_raw.py's own generator:
5-40 words from a 16-word vocabulary, numpy seed 0), truncate at 256 tokens, run batches
of 64 with 2 intra-op threads on the CPU provider and ask for `sentence_embedding`.
Runs alternate raw / dprune `--repeat` times; the best run of each counts (the box is
shared). dprune is measured twice: in input order (`--sort-window 0`, the same batches
as raw) and with its default length-sorted batching. Prints one JSON line per run and a
summary with the ratios:
  inference        dprune model time only vs raw session.run time only
  end_to_end       dprune read + tokenise + infer + write vs raw session.run only
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")


def captions(n):
    # identical to ort_raw.py's texts_from() without --parquet
    rng = np.random.default_rng(0)
    words = "the a red blue small city river dog car house tree market night old new quiet busy".split()
    return [" ".join(rng.choice(words, rng.integers(5, 40))) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(SHARED, "models", "minilm-l6-v2.onnx"))
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dprune", default=os.path.join(ROOT, "target", "release", "dprune"))
    ap.add_argument("--raw", default=os.path.join(SHARED, "bench", "ort_raw.py"))
    a = ap.parse_args()
    tok = a.tokenizer or os.path.join(os.path.dirname(a.model), "tokenizer.json")
    tmp = tempfile.mkdtemp(prefix="dprune-embed-bench-")
    data = os.path.join(tmp, "captions.parquet")
    pq.write_table(pa.table({"id": np.arange(a.n), "caption": captions(a.n)}), data)

    best = {}

    def keep(name, value):
        best[name] = max(best.get(name, 0.0), value)

    for r in range(a.repeat):
        raw = subprocess.run([sys.executable, a.raw, a.model, tok, "--parquet", data, "--text-col", "caption",
                              "--n", str(a.n), "--batch", str(a.batch), "--threads", str(a.threads),
                              "--max-length", str(a.max_length)], check=True, capture_output=True, text=True)
        rj = json.loads(raw.stdout.strip().splitlines()[-1])
        print(json.dumps({"run": r, "side": "raw", **rj}))
        keep("raw_inference", rj["inference_samples_per_s"])
        keep("raw_tokenize_plus_inference", rj["tokenize_plus_inference_samples_per_s"])
        for label, window in [("dprune_input_order", "0"), ("dprune_sorted", "1024")]:
            out = os.path.join(tmp, f"out-{label}-{r}")
            t0 = time.perf_counter()
            subprocess.run([a.dprune, "embed", "--model", a.model, "--tokenizer", tok, "--text-col", "caption",
                            data, "-o", out, "--batch-size", str(a.batch), "--threads", str(a.threads),
                            "--max-length", str(a.max_length), "--device", "cpu", "--sort-window", window, "-q"],
                           check=True)
            wall = time.perf_counter() - t0
            rep = json.load(open(os.path.join(out, "_dprune_report.json")))
            row = {"run": r, "side": label, "n": rep["n_rows"], "inference_samples_per_s": rep["inference_samples_per_s"],
                   "end_to_end_samples_per_s": rep["samples_per_s"], "process_wall_s": round(wall, 2),
                   "provider": rep["encoder"]["provider"]}
            print(json.dumps(row))
            keep(f"{label}_inference", rep["inference_samples_per_s"])
            keep(f"{label}_end_to_end", rep["samples_per_s"])

    summary = {k: round(v, 1) for k, v in best.items()}
    for label in ["dprune_input_order", "dprune_sorted"]:
        summary[f"{label}_inference_vs_raw"] = round(best[f"{label}_inference"] / best["raw_inference"], 3)
        summary[f"{label}_end_to_end_vs_raw"] = round(best[f"{label}_end_to_end"] / best["raw_inference"], 3)
    summary.update({"n": a.n, "batch": a.batch, "threads": a.threads, "max_length": a.max_length,
                    "model": os.path.basename(a.model)})
    print(json.dumps({"summary": summary}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
