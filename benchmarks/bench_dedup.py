"""Near-dedup throughput and recall: dslib's numpy MinHash+LSH against datasketch, side by
side on the same documents, shingles and (bands, rows); plus the whole pipeline on ~100k
documents and the semantic filter's speed.

Documents: distinct real verses (KJV/ASV/WEB) plus 30% perturbed copies (0-3 random word
deletions, duplications or swaps; see dslib.data.nearcheck.perturbed_corpus). Recall: of
the planted (copy, source) pairs whose exact word-shingle Jaccard reaches the threshold,
the share that ends in one cluster (union-find over verified candidate pairs, for both
implementations). Writes outputs/bench/dedup.json and dedup.md.

    PYTHONPATH=. python benchmarks/bench_dedup.py [--sizes 10000 100000 300000] [--datasketch-max 100000]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from dslib.data import config, dedup, demo, domain, nearcheck, pipeline
from dslib.env import outputs_dir


def timed(fn, *args) -> tuple[np.ndarray, float, float]:
    """fn's result, wall seconds, and CPU seconds of this process (the machine is shared:
    CPU time is the fair measure when other jobs take turns on the cores)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def ours(texts: list[str], threshold: float, num_perm: int, k: int, bands: int, rows: int) -> np.ndarray:
    return dedup.near_duplicates(texts, threshold, num_perm, k, bands, rows).root


def with_datasketch(texts: list[str], threshold: float, num_perm: int, k: int, bands: int, rows: int) -> np.ndarray:
    """The same word k-gram shingles, MinHash(num_perm), MinHashLSH(params=(bands, rows)),
    candidates verified with MinHash.jaccard, union-find."""
    from datasketch import MinHash, MinHashLSH

    shingles = []
    for text in texts:
        words = dedup.words(text)
        grams = [" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))] if words else []
        shingles.append([g.encode() for g in grams])
    hashes = MinHash.bulk(shingles, num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, rows))
    with lsh.insertion_session() as session:
        for i, m in enumerate(hashes):
            if shingles[i]:
                session.insert(i, m)
    pairs = [(i, j) for i, m in enumerate(hashes) if shingles[i] for j in lsh.query(m)
             if j > i and m.jaccard(hashes[j]) >= threshold]
    return dedup.union_find(len(texts), np.array(pairs, dtype=np.int64).reshape(-1, 2))


def recall(texts: list[str], planted: np.ndarray, root: np.ndarray, threshold: float, k: int) -> tuple[float, int]:
    exact = dedup.exact_jaccard(dedup.shingle(texts, k), planted)
    positive = planted[exact >= threshold]
    return float(np.mean(root[positive[:, 0]] == root[positive[:, 1]])), len(positive)


def pipeline_run(n_docs: int, work: str) -> dict:
    """clean + quality + exact + near dedup + keyword domain filter over ~n_docs mixed documents."""
    from dslib.data.config import DomainConfig

    ds = demo.mixed_documents(n_docs)
    cfg = config.load_config("default")
    t0 = time.perf_counter()
    keyword = domain.DomainFilter.from_config(DomainConfig(kind="domain", mode="keyword", background_source="kjv"))
    setup = time.perf_counter() - t0
    import datasets

    result, seconds, cpu = timed(pipeline.run_pipeline, datasets.Dataset.from_pandas(ds),
                                 config.build_steps(cfg) + [keyword], work, cfg.num_proc)
    return {"docs": len(ds), "seconds": seconds, "cpu_seconds": cpu, "docs_per_s": len(ds) / seconds,
            "term_list_setup_s": setup,
            "kept": result.funnel.kept_docs, "num_proc": cfg.num_proc,
            "steps": [r["step"] for r in result.funnel.rows]}


def semantic_speed(n_docs: int) -> dict:
    texts = list(domain.labelled_corpus(n_docs // 3 + 1)["text"])[:n_docs]
    scorer = domain.SemanticScorer.hpo()
    _, seconds, cpu = timed(scorer.score, texts)
    return {"docs": len(texts), "seconds": seconds, "cpu_seconds": cpu, "docs_per_s": len(texts) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--datasketch-max", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle-size", type=int, default=5)
    parser.add_argument("--pipeline-docs", type=int, default=100_000)
    parser.add_argument("--semantic-docs", type=int, default=300)
    args = parser.parse_args()
    bands, rows = dedup.choose_bands(args.threshold, args.num_perm)
    rows_out = []
    for n in args.sizes:
        texts, planted = nearcheck.perturbed_corpus(n)
        root, seconds, cpu = timed(ours, texts, args.threshold, args.num_perm, args.shingle_size, bands, rows)
        row = {"docs": n, "ours_s": seconds, "ours_cpu_s": cpu, "ours_docs_per_s": n / seconds,
               "ours_docs_per_cpu_s": n / cpu}
        row["ours_recall"], row["planted_pairs_over_threshold"] = recall(texts, planted, root, args.threshold, args.shingle_size)
        if n <= args.datasketch_max:
            root_ds, seconds_ds, cpu_ds = timed(with_datasketch, texts, args.threshold, args.num_perm,
                                                args.shingle_size, bands, rows)
            row.update(datasketch_s=seconds_ds, datasketch_cpu_s=cpu_ds, datasketch_docs_per_s=n / seconds_ds,
                       datasketch_docs_per_cpu_s=n / cpu_ds,
                       datasketch_recall=recall(texts, planted, root_ds, args.threshold, args.shingle_size)[0],
                       speedup=seconds_ds / seconds, speedup_cpu=cpu_ds / cpu)
        rows_out.append(row)
        print(row, flush=True)
    report = {"threshold": args.threshold, "num_perm": args.num_perm, "shingle_size": args.shingle_size,
              "bands": bands, "rows": rows, "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
              "near_dedup": rows_out,
              "pipeline": pipeline_run(args.pipeline_docs, "/tmp/bench-dedup-pipeline"),
              "semantic": semantic_speed(args.semantic_docs)}
    report["load_average_1min_end"] = os.getloadavg()[0]
    out = outputs_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dedup.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Near dedup: dslib numpy MinHash+LSH vs datasketch (threshold {args.threshold}, "
             f"{args.num_perm} perms, {bands} bands x {rows} rows, word {args.shingle_size}-grams)", "",
             "| docs | dslib wall s | dslib CPU s | dslib docs/CPU-s | dslib recall | datasketch wall s | datasketch CPU s "
             "| datasketch docs/CPU-s | datasketch recall | speed-up (wall / CPU) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows_out:
        ds_cells = (f"{r['datasketch_s']:.1f} | {r['datasketch_cpu_s']:.1f} | {r['datasketch_docs_per_cpu_s']:.0f} | "
                    f"{r['datasketch_recall']:.3f} | {r['speedup']:.1f}x / {r['speedup_cpu']:.1f}x") \
            if "speedup" in r else "- | - | - | - | -"
        lines.append(f"| {r['docs']} | {r['ours_s']:.1f} | {r['ours_cpu_s']:.1f} | {r['ours_docs_per_cpu_s']:.0f} | "
                     f"{r['ours_recall']:.3f} | {ds_cells} |")
    p, s = report["pipeline"], report["semantic"]
    lines += ["", f"Whole pipeline ({' + '.join(p['steps'][1:])}) on {p['docs']} documents: {p['seconds']:.1f} s wall, "
              f"{p['cpu_seconds']:.1f} s CPU of the main process ({p['docs_per_s']:.0f} docs/s wall, num_proc "
              f"{p['num_proc']}; term-list setup {p['term_list_setup_s']:.1f} s).",
              f"Semantic filter (all-MiniLM-L6-v2): {s['docs_per_s']:.1f} docs/s wall on {s['docs']} documents "
              f"({s['cpu_seconds']:.1f} s CPU over 2 torch threads).",
              f"Machine: {report['cpus']} CPUs, 1-min load average {report['load_average_1min']:.1f} at start, "
              f"{report['load_average_1min_end']:.1f} at end (shared machine: absolute times vary, the ratios are side by side)."]
    (out / "dedup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
