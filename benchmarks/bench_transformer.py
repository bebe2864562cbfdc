"""Transformer benchmark: Ray Train vs one plain PyTorch process, and CPU inference with and without int8.

    .venv/bin/python benchmarks/bench_transformer.py [--n-train 512] [--epochs 2]
        [--export DIR --eval-csv FILE]   # quantisation cost of an already trained model on labelled texts
    .venv/bin/python benchmarks/bench_transformer.py --windows-table [--n-train 2000] [--n-test 1000]
        # how much of an email to read: max_length and windows on three corpora (transformer_windows.py)

(a) Training throughput on the same generated emails (real MiniLM, max_length 64, global batch 32, the same
    steps): Ray Train with 2 workers x 1 thread (the product path, `train_transformer`) against a single
    process with 2 threads (`torch_loop.train_epoch`). Samples/s of the last epoch, the first carrying
    start-up. Goal: ratio >= 0.85.
(b) Inference with `TransformerPredictor` at 1 thread: latency per call and texts/s at batch 1, 8 and 32,
    plain and dynamically quantised to int8, and what quantisation costs: agreement of the two models' top
    labels, the largest probability change, and accuracy of each.
Writes benchmarks/results/transformer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.mail.text import model_text
from serving.models.transformer import TransformerPredictor
from training import torch_loop
from training.data import read_dataset
from training.synth import generate
from training.transformer import train_transformer
from training.transformer_config import TransformerConfig

RESULTS = Path(__file__).resolve().parent / "results"


def plain_loop(texts: list[str], labels: list[str], cfg: TransformerConfig, threads: int) -> list[dict[str, float]]:
    """The single-process baseline, on exactly the split and batch size the Ray run uses."""
    torch.set_num_threads(threads)
    names = sorted(set(labels))
    ids = [names.index(label) for label in labels]
    train_idx, _ = torch_loop.split_train_val(labels, cfg.val_fraction, cfg.seed)
    tokenizer = torch_loop.load_tokenizer(cfg)
    model = torch_loop.build_model(cfg, names, len(tokenizer))
    steps_per_epoch = -(-len(train_idx) // cfg.batch_size)
    optimizer = torch_loop.make_optimizer(model, cfg)
    scheduler = torch_loop.make_scheduler(optimizer, cfg, steps_per_epoch)
    weights = torch_loop.class_weights([ids[i] for i in train_idx], len(names))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    rng = np.random.default_rng(cfg.seed)
    epochs = []
    for epoch in range(1, cfg.epochs + 1):
        order = rng.permutation(train_idx)
        chunks = [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
        rows = [{"text": [texts[i] for i in c], "label": [ids[i] for i in c]} for c in chunks]
        batches = torch_loop.tensor_batches(rows, tokenizer, torch_loop.window_spec(cfg))
        stats = torch_loop.train_epoch(model, batches, optimizer, scheduler, loss_fn)
        epochs.append({"epoch": epoch, "samples_per_s": stats.samples_per_s, "loss": stats.mean_loss})
        print(
            f"  plain epoch {epoch}: {stats.samples_per_s:.1f} samples/s, loss {stats.mean_loss:.3f}",
            flush=True,
        )
    return epochs


def inference(predictor: TransformerPredictor, texts: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for batch in (1, 8, 32):
        calls = max(8, 128 // batch)
        predictor.predict_proba(texts[:batch])  # warm-up
        times = []
        for c in range(calls):
            start = (c * batch) % max(1, len(texts) - batch)
            t0 = time.perf_counter()
            predictor.predict_proba(texts[start : start + batch])
            times.append(time.perf_counter() - t0)
        arr = np.array(times) * 1000
        out[f"batch_{batch}"] = {
            "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p95_ms": round(float(np.percentile(arr, 95)), 2),
            "texts_per_s": round(batch * calls / (arr.sum() / 1000), 1),
        }
    return out


def quantisation_cost(export: Path, texts: list[str], labels: list[str] | None) -> dict[str, Any]:
    plain = TransformerPredictor.load(export, threads=1)
    quant = TransformerPredictor.load(export, threads=1, quantize=True)
    p, q = plain.predict_proba(texts), quant.predict_proba(texts)
    cost: dict[str, Any] = {
        "n": len(texts),
        "top_label_agreement": float((p.argmax(1) == q.argmax(1)).mean()),
        "max_abs_prob_diff": float(np.abs(p - q).max()),
    }
    if labels is not None:
        truth = np.array(labels)
        cost["accuracy_plain"] = float((np.array(plain.labels)[p.argmax(1)] == truth).mean())
        cost["accuracy_int8"] = float((np.array(quant.labels)[q.argmax(1)] == truth).mean())
    cost["inference_plain"] = inference(plain, texts)
    cost["inference_int8"] = inference(quant, texts)
    return cost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=512, help="generated emails to train on")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training arm (the last is measured)")
    parser.add_argument("--export", type=Path, help="measure inference on this export instead of the one trained")
    parser.add_argument("--eval-csv", type=Path, help="labelled texts (text,label) for the quantisation cost")
    parser.add_argument("--skip-training", action="store_true", help="only part (b); needs --export")
    parser.add_argument("--out", default=None, help="results file under benchmarks/results/")
    parser.add_argument(
        "--windows-table", action="store_true", help="only the max_length / windows screen (transformer_windows.py)"
    )
    parser.add_argument("--n-test", type=int, default=1000, help="test texts per corpus for --windows-table")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.windows_table:
        from transformer_windows import windows_table

        screen = windows_table(args.n_train, args.n_test)
        screen["load_avg_1min_at_end"] = os.getloadavg()[0]
        out = RESULTS / (args.out or "transformer_windows.json")
        out.write_text(json.dumps(screen, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {out}")
        return 0

    frame = generate(args.n_train + 256, seed=23)
    texts = [model_text(s, b) for s, b in zip(frame["subject"], frame["body"], strict=True)]
    labels = frame["queue"].tolist()
    train_texts, train_labels = texts[: args.n_train], labels[: args.n_train]
    held_texts, held_labels = texts[args.n_train :], labels[args.n_train :]
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        # Other work on a shared machine skews every number here; the load says how quiet it was.
        "load_avg_1min_at_start": os.getloadavg()[0],
    }
    cfg = TransformerConfig(
        epochs=args.epochs,
        batch_size=32,
        max_length=64,
        learning_rate=8e-5,
        early_stopping_patience=args.epochs,
        num_workers=2,
        threads_per_worker=1,
    )
    export = args.export
    if not args.skip_training:
        print(f"(a) training on {len(train_texts)} emails, {args.epochs} epochs per arm", flush=True)
        plain = plain_loop(train_texts, train_labels, cfg, threads=2)
        with tempfile.TemporaryDirectory(prefix="bench-transformer-") as tmp:
            run = train_transformer(train_texts, train_labels, cfg, run_dir=Path(tmp) / "run", timeout_s=900)
            ray_epochs = [
                {"epoch": h["epoch"], "samples_per_s": h["train_samples_per_s"], "loss": h["train_loss"]}
                for h in run.history
            ]
            for h in ray_epochs:
                print(f"  ray   epoch {h['epoch']}: {h['samples_per_s']:.1f} samples/s, loss {h['loss']:.3f}")
            if export is None:
                export = RESULTS / "scratch" / "transformer-export"
                export.parent.mkdir(parents=True, exist_ok=True)
                import shutil

                shutil.rmtree(export, ignore_errors=True)
                shutil.copytree(run.export_dir, export)
        ratio = ray_epochs[-1]["samples_per_s"] / plain[-1]["samples_per_s"]
        report["training"] = {
            "n_train": len(train_texts),
            "max_length": cfg.max_length,
            "batch_size": cfg.batch_size,
            "plain_2_threads": plain,
            "ray_2_workers_x_1_thread": ray_epochs,
            "ray_fit_wall_s": run.metrics["wall_s"],
            "ratio_ray_over_plain": round(ratio, 3),
            "goal": 0.85,
        }
        print(f"  ratio Ray / plain (last epoch): {ratio:.3f}  (goal >= 0.85)")
    if export is None:
        parser.error("--skip-training needs --export")

    eval_texts, eval_labels = held_texts, held_labels
    if args.eval_csv is not None:  # read and cleaned as `mailroute evaluate --text-col text` does
        table = read_dataset(args.eval_csv, text_col="text", label_col="label", require_labels=True).frame
        eval_texts, eval_labels = table["text"].tolist(), [str(v) for v in table["label"]]
        report["eval_data"] = str(args.eval_csv)
    print(f"(b) inference, 1 thread, on {len(eval_texts)} texts", flush=True)
    cost = quantisation_cost(export, eval_texts, eval_labels)
    report["inference"] = cost
    for kind in ("inference_plain", "inference_int8"):
        for batch, row in cost[kind].items():
            print(f"  {kind:16s} {batch:9s} p50 {row['p50_ms']:7.1f} ms  {row['texts_per_s']:7.1f} texts/s")
    for batch in cost["inference_plain"]:
        speedup = cost["inference_int8"][batch]["texts_per_s"] / cost["inference_plain"][batch]["texts_per_s"]
        print(f"  int8 speed-up at {batch}: {speedup:.2f}x")
    acc_plain, acc_int8 = cost.get("accuracy_plain", float("nan")), cost.get("accuracy_int8", float("nan"))
    print(
        f"  int8 agreement {cost['top_label_agreement']:.4f}, "
        f"max prob change {cost['max_abs_prob_diff']:.3f}, accuracy {acc_plain:.4f} -> {acc_int8:.4f}"
    )
    report["load_avg_1min_at_end"] = os.getloadavg()[0]
    (RESULTS / (args.out or "transformer.json")).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / (args.out or 'transformer.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
