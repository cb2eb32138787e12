"""Near-dedup throughput, recall and precision: dslib's numpy MinHash+LSH against datasketch,
side by side on the same documents, shingles and (bands, rows); plus the whole pipeline on
~100k documents and the semantic filter's speed.

Two kinds of documents with known near-duplicate pairs:
- perturbed: distinct real verses (KJV/ASV/WEB) plus 30% perturbed copies (0-3 random word
  deletions, duplications or swaps; see dslib.data.nearcheck.perturbed_corpus), each copy a
  pair with its source;
- translations: every verse of KJV and ASV (verse-aligned), the same verse in the two a
  pair (at --translation-threshold, 0.8 by default).
Recall: of the known pairs whose exact word-shingle Jaccard reaches the threshold, the share
that ends in one cluster (union-find over verified candidate pairs, for both
implementations). Precision: of the accepted candidate pairs, the share whose exact
Jaccard reaches the threshold. Writes outputs/bench/dedup.json and dedup.md.

    PYTHONPATH=. python benchmarks/bench_dedup.py [--sizes 10000 100000 300000] [--datasketch-max 100000]
"""
from __future__ import annotations

import argparse
import functools
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


def ours(texts: list[str], threshold: float, num_perm: int, k: int, bands: int, rows: int,
         verify: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    """Cluster root per document and the accepted pairs."""
    result = dedup.near_duplicates(texts, threshold, num_perm, k, bands, rows, verify=verify)
    return result.root, result.pairs[result.accepted]


def with_datasketch(texts: list[str], threshold: float, num_perm: int, k: int, bands: int,
                    rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The same word k-gram shingles, MinHash(num_perm), MinHashLSH(params=(bands, rows)),
    candidates verified with MinHash.jaccard, union-find: cluster roots and accepted pairs."""
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
    pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return dedup.union_find(len(texts), pairs), pairs


def scores(sh: dedup.Shingles, known: np.ndarray, root: np.ndarray, accepted: np.ndarray,
           threshold: float) -> dict:
    """Recall on the known pairs over the threshold, precision of the accepted pairs."""
    positive = known[dedup.exact_jaccard(sh, known) >= threshold]
    correct = dedup.exact_jaccard(sh, accepted) >= threshold
    return {"recall": float(np.mean(root[positive[:, 0]] == root[positive[:, 1]])),
            "precision": float(correct.mean()) if len(accepted) else float("nan"),
            "pairs_over_threshold": len(positive), "accepted_pairs": len(accepted)}


def compare(texts: list[str], known: np.ndarray, threshold: float, num_perm: int, k: int,
            with_reference: bool, verify: str) -> dict:
    """dslib (and datasketch when ``with_reference``) on ``texts``: times, recall, precision."""
    bands, rows = dedup.choose_bands(threshold, num_perm)
    sh, n = dedup.shingle(texts, k), len(texts)
    row = {"docs": n, "threshold": threshold, "bands": bands, "rows": rows}
    runs = {"ours": functools.partial(ours, verify=verify)}
    if with_reference:
        runs["datasketch"] = with_datasketch
    for name, fn in runs.items():
        (root, accepted), seconds, cpu = timed(fn, texts, threshold, num_perm, k, bands, rows)
        row.update({f"{name}_s": seconds, f"{name}_cpu_s": cpu, f"{name}_docs_per_s": n / seconds,
                    f"{name}_docs_per_cpu_s": n / cpu},
                   **{f"{name}_{key}": v for key, v in scores(sh, known, root, accepted, threshold).items()})
    if with_reference:
        row.update(speedup=row["datasketch_s"] / row["ours_s"], speedup_cpu=row["datasketch_cpu_s"] / row["ours_cpu_s"])
    return row


def translation_pairs(versions: tuple[str, ...] = ("kjv", "asv")) -> tuple[list[str], np.ndarray]:
    """Every verse of each version; the same verse in two versions is a known pair."""
    verses = nearcheck.translation_corpus(10**6, versions)
    return list(verses.text), nearcheck.known_pairs(verses.verse.values)


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


def table(title: str, rows: list[dict]) -> list[str]:
    lines = [title, "", "| docs | threshold | dslib wall s | dslib CPU s | dslib recall | dslib precision | datasketch wall s "
             "| datasketch CPU s | datasketch recall | datasketch precision | speed-up (wall / CPU) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        theirs = (f"{r['datasketch_s']:.1f} | {r['datasketch_cpu_s']:.1f} | {r['datasketch_recall']:.4f} | "
                  f"{r['datasketch_precision']:.4f} | {r['speedup']:.1f}x / {r['speedup_cpu']:.1f}x") \
            if "speedup" in r else "- | - | - | - | -"
        lines.append(f"| {r['docs']} | {r['threshold']} | {r['ours_s']:.2f} | {r['ours_cpu_s']:.2f} | "
                     f"{r['ours_recall']:.4f} | {r['ours_precision']:.4f} | {theirs} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 300_000])
    parser.add_argument("--datasketch-max", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--translation-threshold", type=float, default=0.8, help="KJV-ASV pairs; 0: skip")
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle-size", type=int, default=5)
    parser.add_argument("--pipeline-docs", type=int, default=100_000, help="0: skip")
    parser.add_argument("--semantic-docs", type=int, default=300, help="0: skip")
    parser.add_argument("--verify", default="exact", choices=["exact", "estimated"], help="dslib's verification")
    args = parser.parse_args()
    report = {"num_perm": args.num_perm, "shingle_size": args.shingle_size, "verify": args.verify, "cpus": os.cpu_count(),
              "load_average_1min": os.getloadavg()[0], "near_dedup": [], "translations": []}
    for n in args.sizes:
        texts, planted = nearcheck.perturbed_corpus(n)
        report["near_dedup"].append(compare(texts, planted, args.threshold, args.num_perm, args.shingle_size,
                                            n <= args.datasketch_max, args.verify))
        print(report["near_dedup"][-1], flush=True)
    if args.translation_threshold:
        texts, known = translation_pairs()
        report["translations"].append(compare(texts, known, args.translation_threshold, args.num_perm,
                                              args.shingle_size, True, args.verify))
        print(report["translations"][-1], flush=True)
    if args.pipeline_docs:
        report["pipeline"] = pipeline_run(args.pipeline_docs, "/tmp/bench-dedup-pipeline")
    if args.semantic_docs:
        report["semantic"] = semantic_speed(args.semantic_docs)
    report["load_average_1min_end"] = os.getloadavg()[0]
    out = outputs_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dedup.json").write_text(json.dumps(report, indent=2))
    setting = (f"{args.num_perm} perms, bands x rows from dedup.choose_bands, word {args.shingle_size}-grams; "
               f"dslib verifies candidates with the {args.verify} Jaccard, datasketch with its estimate")
    lines = table(f"# Near dedup: dslib numpy MinHash+LSH vs datasketch ({setting})\n\n"
                  "## Verses and their perturbed copies", report["near_dedup"])
    lines += table("## KJV and ASV, every verse (the same verse in both: a known pair)", report["translations"])
    if "pipeline" in report:
        p = report["pipeline"]
        lines.append(f"Whole pipeline ({' + '.join(p['steps'][1:])}) on {p['docs']} documents: {p['seconds']:.1f} s "
                     f"wall, {p['cpu_seconds']:.1f} s CPU of the main process ({p['docs_per_s']:.0f} docs/s wall, "
                     f"num_proc {p['num_proc']}; term-list setup {p['term_list_setup_s']:.1f} s).")
    if "semantic" in report:
        s = report["semantic"]
        lines.append(f"Semantic filter (all-MiniLM-L6-v2): {s['docs_per_s']:.1f} docs/s wall on {s['docs']} documents "
                     f"({s['cpu_seconds']:.1f} s CPU over 2 torch threads).")
    lines.append(f"Machine: {report['cpus']} CPUs, 1-min load average {report['load_average_1min']:.1f} at start, "
                 f"{report['load_average_1min_end']:.1f} at end (shared machine: absolute times vary, the ratios "
                 "are side by side).")
    (out / "dedup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
