#!/usr/bin/env python3
"""Does pruning with dprune beat random on real labelled data? (offline, small, CPU)

For each dataset: standardised pixels -> PCA(32) fitted on the train split = the
"embedding"; a fixed stratified 70/30 split (seed 0); optional label noise injected
into the TRAIN labels only (flip a fraction to a random other class). The train split
is written to Parquet (id, label, emb: fixed_size_list<float32, 32>), every selector
is run through the dprune binary with --scores-only, and a LogisticRegression trained
on the kept rows (with their possibly noisy labels) is scored on the clean test split.
Also reported: the fraction of kept rows whose label was flipped (noise enrichment;
the overall rate is the --noise value).

dprune sees only the embeddings, so a selection does not depend on the noise level:
each (dataset, method, keep, seed) is run once and reused for every noise level.

    pip install scikit-learn pyarrow numpy
    python benches/eval_real.py                         # digits + mnist-1k, noise 0 and 0.2
    python benches/eval_real.py --datasets digits --keep 0.3 --seeds 2 --out /tmp/r.json

Datasets: digits = sklearn.datasets.load_digits (1797 8x8 images, bundled with
scikit-learn, no download); mnist1k = ../shared/data/mnist-test-1k.parquet (1000 MNIST
test images: label + 784 `pixels`).
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MNIST = os.path.join(os.path.dirname(ROOT), "shared", "data", "mnist-test-1k.parquet")

# name -> extra dprune flags
METHODS = {
    "random": ["--metric", "random"],
    "random-strat": ["--metric", "random", "--balance", "clusters"],
    "proto-hard": ["--metric", "proto"],
    "proto-easy": ["--metric", "proto", "--keep-easy"],
    "ccs": ["--metric", "ccs"],
    "moderate": ["--metric", "moderate"],
    "dbp": ["--metric", "dbp"],
    "semdedup": ["--metric", "semdedup"],
    # extras, not in the default list (--methods ...,proto-hard-bal)
    "proto-hard-bal": ["--metric", "proto", "--balance", "clusters"],
    "proto-easy-bal": ["--metric", "proto", "--keep-easy", "--balance", "clusters"],
}
DEFAULT_METHODS = ["random", "random-strat", "proto-hard", "proto-easy", "ccs", "moderate", "dbp", "semdedup"]


def load(name):
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data.astype(np.float64), d.target.astype(np.int64)
    if name == "mnist1k":
        t = pq.read_table(MNIST, columns=["label", "pixels"])
        x = np.asarray(t.column("pixels").combine_chunks().flatten(), dtype=np.float64)
        return x.reshape(t.num_rows, -1), np.asarray(t.column("label"), dtype=np.int64)
    raise SystemExit(f"unknown dataset {name}")


def features(x, y, dim):
    from sklearn.decomposition import PCA
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    sc = StandardScaler().fit(xtr)
    pca = PCA(n_components=dim, random_state=0).fit(sc.transform(xtr))
    etr = pca.transform(sc.transform(xtr)).astype(np.float32)
    ete = pca.transform(sc.transform(xte)).astype(np.float32)
    return etr, ete, ytr, yte


def add_noise(y, frac, seed=0):
    """Flips round(frac·n) labels to a uniformly random other class; returns (y', flipped)."""
    rng = np.random.default_rng(seed)
    y = y.copy()
    flipped = np.zeros(len(y), bool)
    n = int(round(frac * len(y)))
    if n == 0:
        return y, flipped
    classes = np.unique(y)
    idx = rng.choice(len(y), n, replace=False)
    for i in idx:
        others = classes[classes != y[i]]
        y[i] = rng.choice(others)
    flipped[idx] = True
    return y, flipped


def write_train(path, emb, y):
    n, dim = emb.shape
    values = pa.array(emb.reshape(-1), pa.float32())
    t = pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "label": pa.array(y.astype(np.int64)),
        "emb": pa.FixedSizeListArray.from_arrays(values, dim),
    })
    pq.write_table(t, path)


def select(dprune, train, out, flags, keep, k, seed, n, threads):
    """Runs dprune --scores-only; returns the boolean kept mask in input order."""
    cmd = [dprune, "filter", "--keep", str(keep), *flags, "--k", str(k), "--seed", str(seed),
           "--scores-only", "-q", "--overwrite", "--no-plot", "--threads", str(threads),
           "-o", out, train]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or p.stderr.strip():
        msg = f"$ {' '.join(cmd)}\nrc={p.returncode}\n{p.stderr.strip()}"
        if p.returncode != 0:
            raise RuntimeError(msg)
        print("dprune stderr:", msg, file=sys.stderr)
    t = pq.read_table(os.path.join(out, "scores.parquet"))
    row = np.asarray(t.column("row"), dtype=np.int64)
    kept = np.asarray(t.column("kept").to_pylist(), dtype=bool)
    if len(row) != n or not np.array_equal(row, np.arange(n)):
        raise RuntimeError(f"scores.parquet rows not 0..{n - 1} in order: {cmd}")
    return kept


def accuracy(xtr, ytr, xte, yte):
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(ytr)) < 2:
        return float("nan")
    clf = LogisticRegression(max_iter=2000).fit(xtr, ytr)
    return float(clf.score(xte, yte))


def fmt(vals, pct=True):
    v = np.asarray(vals, float)
    s = 100 if pct else 1
    return f"{s * np.nanmean(v):.1f} ± {s * np.nanstd(v):.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dprune", default="/tmp/dpb/dprune-rel")
    ap.add_argument("--datasets", default="digits,mnist1k")
    ap.add_argument("--keep", default="0.1,0.2,0.3,0.5,0.7")
    ap.add_argument("--noise", default="0,0.2")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"any of {','.join(METHODS)}")
    ap.add_argument("--k", type=int, default=20, help="k-means clusters (10 classes; 20 lets a class split into its modes)")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="eval_real.json")
    a = ap.parse_args()
    keeps = [float(v) for v in a.keep.split(",")]
    noises = [float(v) for v in a.noise.split(",")]
    methods = a.methods.split(",")
    seeds = list(range(a.seeds))
    results = {"config": vars(a), "datasets": {}}
    tmp = tempfile.mkdtemp(prefix="dprune_eval_")
    t0 = time.time()
    for ds in a.datasets.split(","):
        x, y = load(ds)
        etr, ete, ytr, yte = features(x, y, a.dim)
        n = len(ytr)
        train = os.path.join(tmp, f"{ds}_train.parquet")
        write_train(train, etr, ytr)  # true labels in the file; dprune never reads them
        out = os.path.join(tmp, f"{ds}_out")
        masks, errors = {}, []
        for m in methods:
            for f in keeps:
                for s in seeds:
                    try:
                        masks[(m, f, s)] = select(a.dprune, train, out, METHODS[m], f, a.k, s, n, a.threads)
                    except RuntimeError as e:
                        errors.append(str(e))
                        print("ERROR:", e, file=sys.stderr)
        print(f"[{ds}] {len(masks)} dprune runs done, {time.time() - t0:.0f}s", file=sys.stderr)
        dres = {"n_train": n, "n_test": len(yte), "k": a.k, "errors": errors, "noise": {}}
        for nz in noises:
            yn, flipped = add_noise(ytr, nz, seed=0)
            full = accuracy(etr, yn, ete, yte)
            rows = {}
            for m in methods:
                rows[m] = {}
                for f in keeps:
                    accs, noisy, kept_n = [], [], []
                    for s in seeds:
                        mk = masks.get((m, f, s))
                        if mk is None:
                            continue
                        accs.append(accuracy(etr[mk], yn[mk], ete, yte))
                        noisy.append(float(flipped[mk].mean()) if mk.any() else float("nan"))
                        kept_n.append(int(mk.sum()))
                    rows[m][str(f)] = {"acc": accs, "acc_mean": float(np.nanmean(accs)) if accs else None,
                                       "acc_std": float(np.nanstd(accs)) if accs else None,
                                       "noisy_frac": noisy, "noisy_mean": float(np.nanmean(noisy)) if noisy else None,
                                       "kept": kept_n}
            dres["noise"][str(nz)] = {"full_acc": full, "methods": rows}
            print(f"\n### {ds} (train {n}, test {len(yte)}, k={a.k}), label noise {nz:g}: "
                  f"test accuracy %, mean ± std over {len(seeds)} seeds\n")
            print(f"Full data (100% kept): {100 * full:.1f}\n")
            print("| method | " + " | ".join(f"keep {f:g}" for f in keeps) + " |")
            print("|---|" + "---|" * len(keeps))
            for m in methods:
                cells = [fmt(rows[m][str(f)]["acc"]) if rows[m][str(f)]["acc"] else "ERR" for f in keeps]
                print(f"| {m} | " + " | ".join(cells) + " |")
            if nz > 0:
                print(f"\nFraction of kept rows with a flipped label (%, overall {100 * nz:g}):\n")
                print("| method | " + " | ".join(f"keep {f:g}" for f in keeps) + " |")
                print("|---|" + "---|" * len(keeps))
                for m in methods:
                    cells = [fmt(rows[m][str(f)]["noisy_frac"]) if rows[m][str(f)]["noisy_frac"] else "ERR" for f in keeps]
                    print(f"| {m} | " + " | ".join(cells) + " |")
        results["datasets"][ds] = dres
        sys.stdout.flush()
    with open(a.out, "w") as fh:
        json.dump(results, fh, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nwrote {a.out} ({time.time() - t0:.0f}s)", file=sys.stderr)


if __name__ == "__main__":
    main()
