"""Dynamic padding on real short text (issue 19, "speed on real text"): one training epoch of seo-train
on headline-sized rows with fixed padding to 128 tokens, with padding to each batch's longest row,
and with length buckets, per model, on the CPU.

    python benchmarks/short_text.py                                    # 32,000 rows, both models, 5 rounds
    python benchmarks/short_text.py --rows 16000 --repeats 1           # a quicker look
    python benchmarks/short_text.py --models transformer --repeats 3

The rows (:func:`generate_headlines`, seeded, written once as CSV to a temporary directory): a
headline of 5-20 words (a triangular count peaking at 9) and a binary label ``clickbait`` = y ~
Bernoulli(0.5). Two signals:

- the frame (an opening phrase, and in 70% of rows a closing one) comes from class y's list with
  probability 1 - ``FRAME_NOISE`` = 0.85, else from the other class's (clickbait: "you won't believe
  ...", "17 reasons why ...", "... and the internet is losing it"; news: "... approves budget for
  2024", "... says report", "shares fall 12% after ..."): reading it alone scores 0.85
  (``label_agrees_with_frame`` in the JSON);
- the words between: a quarter function words (the, of, in, ...), the rest content words from a Zipf
  law over 6,000 seeded pseudo-words and a few dozen real ones, of which 20% (``LEAN_RATE``) come
  from y's own list of 300 "leaning" words (drawn from Zipf ranks 30-3,000).

The Bayes classifier (which knows the process) scores about 0.90 (``bayes_accuracy``); one epoch of
either model reads the frame and few of the leaning words, about 0.85. Punctuation (``won't``,
``?``, ``!``, ``:``, ``%``) and the long tail of rare words make seo-train's BPE tokenizer
(``data.vocab_size`` 8,000) cut about 1.1 tokens per word, 12.4 tokens a headline (p99 22, at most
29; measured and reported).

Runs, each ``seo-train`` as its own subprocess (the console script of this interpreter's environment),
``--epochs`` epochs (default 1), ``device=cpu logger=none``, the models' default configs, ``batch_size``
128, the csv split (70 / 15 / 15, stratified), ``seed=42`` in the first round and ``42 + r`` in round r
(the same for every run of a round; seo-train's split uses it too, so each round splits differently,
and the spread of the accuracies over the rounds is the seed-to-seed noise):

- (a) ``fixed``: ``data.padding=max_length data.max_length=128``, every batch 128 tokens wide (what
  seo-train did before dynamic padding; the reference);
- (b) ``longest``: ``data.padding=longest data.max_length=null`` (data=csv's defaults: max_length the
  99th percentile of the training rows' token counts rounded up to 8, each batch cut to its longest row);
- (c) ``buckets``: (b) plus ``data.bucket_by_length=true``.

A round runs every (model, variant) once, the variants in rotated order from round to round;
``--repeats`` rounds (default 5: textcnn's short epochs vary by +-25% from run to run on the 2-core
development VM, with no other process busy), after one untimed warm-up run (the first seo-train of
an invocation has been slower, its epoch included); each figure the median of its runs, and the
speed-ups are ratios of those medians (both sides measured in this one invocation; the ratio within
each round, and the median of those, are in the table and the JSON too).
Per run:

- epoch s: the training rows of the epoch / its ``speed/samples_per_second`` (``metrics.jsonl``'s
  epoch row: the trainer's own time from the epoch's first batch to the sync after its last step;
  validation, checkpoint writing, data preparation and start-up not included). The last epoch's when
  ``--epochs`` > 1. Speed-up = fixed's epoch s / the variant's.
- wall s: the whole command (start-up, reading, tokenizer fitting, training, validation, test, files).
- val accuracy: ``val/clickbait/accuracy`` of ``summary.json`` (the last epoch's), and the test
  accuracy of the best checkpoint.
- padding fraction: ``speed/padding_fraction`` of the epoch row (share of training token slots that
  were padding).
- max_length: 128 for (a); for (b) and (c) the value in the log line ``data.max_length=null: N tokens``.
- load: the 1-minute load average before and after, and ``others_cpu_s``: the CPU seconds the rest
  of the machine took during the run (``/proc/stat`` busy time less the command's own). A run where
  others took more than ``--disturbed`` (default 0.15) of a core on average is marked disturbed and,
  up to ``--retries`` times, run again once the others take less than that over 5 s (waiting at most
  ``--settle-s``); the disturbed runs stay in the JSON (``disturbed_runs``) but not in the medians
  (a run still disturbed after the last retry is kept, with ``"disturbed": true``).

Targets of the issue, judged per model: (b) or (c) at least 5x fixed's epoch speed (the ratio of
the medians); val accuracy the same within noise (|median difference| at most 2 x the larger of the
standard error of a difference of two accuracies on the validation split, sqrt(2 p (1 - p) / n), and
the standard deviation of either variant's accuracies over the rounds); padding fraction of (c)
under 10%. Prints a table and writes
``benchmarks/results/short_text_cpu.json``.
"""

import argparse
import json
import logging
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from machine import git_revision, machine, version
from rich.console import Console
from rich.table import Table

log = logging.getLogger("short_text")

RESULTS = Path(__file__).parent / "results" / "short_text_cpu.json"
MODELS = ["textcnn", "transformer"]
VARIANTS = {
    "fixed": ["data.padding=max_length", "data.max_length=128"],
    "longest": ["data.padding=longest", "data.max_length=null"],
    "buckets": ["data.padding=longest", "data.max_length=null", "data.bucket_by_length=true"],
}
TARGET = "clickbait"
COMMON = [
    "data=csv",
    "data.text_columns=[headline]",
    f"data.targets=[{{name:{TARGET},type:classification}}]",
    "device=cpu",
    "logger=none",
]
BASE_SEED = 42  # round r trains with seed=BASE_SEED + r, the same for every (model, variant) of the round
SPEED_UP_TARGET = 5.0
PADDING_TARGET = 0.10

# ---------------------------------------------------------------------------------------------------
# The rows

FRAME_NOISE = 0.15  # share of headlines whose frame comes from the other class's list
MIN_WORDS, MAX_WORDS, MODE_WORDS = 5, 20, 9
PSEUDO_WORDS = 6000  # seeded pseudo-words: the long tail the tokenizer has to cut
ZIPF_EXPONENT = 0.95
FUNCTION_RATE = 0.25  # share of the content slots holding a function word (the, of, in, ...)
LEAN_WORDS = 300  # content words per class that lean towards it
LEAN_RANKS = (30, 3000)  # the Zipf ranks they are drawn from (seen often enough to be learned)
LEAN_RATE = 0.2  # share of a headline's content words drawn from its label's leaning list
FUNCTION_WORDS = "the the the a a of of in in to to for and on with at from new your my how".split()

REAL_WORDS = (
    "city state people family school home water money market price energy health police court game "
    "team season star movie music phone car road river island dog cat food coffee pizza house garden "
    "job office doctor study report plan deal vote tax bank company startup festival storm weather "
    "election minister mayor teacher student kids parents couple wedding trip hotel beach mountain "
    "park museum library bridge airport train bus bike"
).split()
PLACES = (
    "london paris texas ohio berlin tokyo chicago denver florida kenya brazil seoul dublin oslo lagos "
    "lima toronto sydney madrid boston"
).split()

# A frame: (opening, closing); "{n}" a number drawn per class, "{p}" a place, "{y}" a year.
CLICKBAIT_OPEN = [
    "you won't believe", "{n} reasons why", "{n} things", "this is why", "here's what happens when",
    "what happened next:", "the one", "why you should never", "everyone is talking about", "{n} ways to",
    "can you guess", "we tried", "this simple", "{n} secrets of", "you'll never guess", "only true fans know",
    "{n} photos of", "what nobody tells you about", "this is what", "omg:",
]  # fmt: skip
CLICKBAIT_CLOSE = [
    "and it's amazing!", "will shock you", "you need to know", "(number {n} is insane)", "?", "!",
    "... wow", "and the internet is losing it", "that will make you cry", "you've been doing wrong",
    "- the answer may surprise you", "!!", "in {y}?", "like never before",
]  # fmt: skip
NEWS_OPEN = [
    "{p} council approves", "officials say", "report:", "senate votes on", "court rules on", "shares fall {n}%",
    "police investigate", "{p} mayor announces", "government plans", "study finds", "prices rise {n}%",
    "minister defends", "{p} residents oppose", "company reports", "update:", "lawmakers debate",
    "{p} to expand", "agency warns of", "judge blocks", "voters reject",
]  # fmt: skip
NEWS_CLOSE = [
    "in {p}", "after talks", ", says report", "amid protests", "for {y}", "budget for {y}", "by {n}%",
    ", officials say", "in {p} next year", "despite concerns", ": what we know", "ahead of {y} vote",
    "- {p} times", "",
]  # fmt: skip
CLOSE_RATE = 0.7  # share of headlines with a closing phrase


def pseudo_words(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct pronounceable pseudo-words of 1-3 syllables (a Zipf law ranks them)."""
    onsets = "b c d f g h j k l m n p r s t v w z b d g k l m n p r s t br cl dr fl gr pl pr st tr ch sh th".split()
    vowels = "a e i o u a e i o u ai ea ee oo ou".split()
    codas = ["", "", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng"]
    words: dict[str, None] = {}
    while len(words) < count:
        syllables = rng.choice([1, 2, 2, 2, 3, 3])
        word = "".join(
            onsets[rng.integers(len(onsets))]
            + vowels[rng.integers(len(vowels))]
            + codas[rng.integers(len(codas))]
            for _ in range(syllables)
        )
        words[word] = None
    return list(words)


def generate_headlines(rows: int, seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """``rows`` headlines and their label (columns ``headline``, ``clickbait``), and per row the class
    of its frame and whether the Bayes classifier (which knows the generating process) is right."""
    rng = np.random.default_rng(seed)
    vocab = [*REAL_WORDS, *pseudo_words(PSEUDO_WORDS, rng)]
    ranked = [vocab[i] for i in rng.permutation(len(vocab))]  # real and pseudo-words mixed along the ranks
    general = 1.0 / np.arange(1, len(vocab) + 1) ** ZIPF_EXPONENT
    general /= general.sum()
    # Two disjoint lists of leaning words, drawn from ranks LEAN_RANKS; within a list, as frequent as
    # their rank says (renormalised).
    picked = rng.choice(np.arange(*LEAN_RANKS), size=2 * LEAN_WORDS, replace=False)
    lean = np.zeros((2, len(vocab)))
    for cls, ids in enumerate((picked[:LEAN_WORDS], picked[LEAN_WORDS:])):
        lean[cls, ids] = general[ids] / general[ids].sum()
    p_word = (1 - LEAN_RATE) * general + LEAN_RATE * lean  # P(content word | y), [2, vocab]

    labels = rng.integers(0, 2, rows)
    frame_class = np.where(rng.random(rows) < FRAME_NOISE, 1 - labels, labels)
    # Triangular word count on [MIN_WORDS, MAX_WORDS] peaking at MODE_WORDS, rounded.
    counts = np.rint(rng.triangular(MIN_WORDS - 0.5, MODE_WORDS, MAX_WORDS + 0.49, rows)).astype(int)
    counts = np.clip(counts, MIN_WORDS, MAX_WORDS)
    content = np.stack([rng.choice(len(vocab), size=(rows, MAX_WORDS), p=p_word[c]) for c in (0, 1)])
    content = np.where(labels[:, None] == 1, content[1], content[0])  # [rows, MAX_WORDS] drawn given y
    function = rng.random((rows, MAX_WORDS)) < FUNCTION_RATE
    function_word = rng.integers(0, len(FUNCTION_WORDS), (rows, MAX_WORDS))
    word_log_odds = np.log(p_word[1]) - np.log(p_word[0])
    frame_log_odds = math.log((1 - FRAME_NOISE) / FRAME_NOISE)

    def fill(phrase: str, cls: int) -> str:
        number = rng.integers(3, 26) if cls else rng.integers(2, 60)
        return phrase.format(n=number, p=PLACES[rng.integers(len(PLACES))], y=rng.integers(2019, 2027))

    def words(parts: list[str]) -> int:
        return sum(1 for w in parts if re.search(r"\w", w))

    headlines, bayes_correct = [], np.zeros(rows, dtype=bool)
    for row in range(rows):
        cls = int(frame_class[row])
        openings, closings = (CLICKBAIT_OPEN, CLICKBAIT_CLOSE) if cls else (NEWS_OPEN, NEWS_CLOSE)
        opening = fill(openings[rng.integers(len(openings))], cls).split()
        closing = (
            fill(closings[rng.integers(len(closings))], cls).split() if rng.random() < CLOSE_RATE else []
        )
        budget = counts[row] - words(opening) - words(closing)
        if budget < 1:  # too short for both phrases: keep the opening only
            closing, budget = [], counts[row] - words(opening)
        body, log_odds = [], frame_log_odds if cls else -frame_log_odds
        for i in range(max(budget, 1)):
            if function[row, i] and 0 < i < budget - 1:
                body.append(FUNCTION_WORDS[function_word[row, i]])
            else:
                body.append(ranked[content[row, i]])
                log_odds += word_log_odds[content[row, i]]
        bayes_correct[row] = (log_odds > 0) == bool(labels[row])
        text = " ".join([*opening, *body, *closing]).replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
        headlines.append(text[0].upper() + text[1:])
    return pd.DataFrame({"headline": headlines, TARGET: labels}), {
        "frame_class": frame_class,
        "bayes_correct": bayes_correct,
    }


# ---------------------------------------------------------------------------------------------------
# Running seo-train


def command(name: str) -> list[str]:
    """The console script ``name`` of this interpreter's environment (a pyenv or conda shim adds its
    own start-up and processes), else the module."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", "seo_cli.train"]


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def train_argv(
    model: str, variant: str, csv: Path, epochs: int, seed: int, run_dir: Path | str, extra: list[str]
) -> list[str]:
    return [
        *command("seo-train"),
        *COMMON,
        *extra,
        f"seed={seed}",
        f"data.path={csv}",
        f"model={model}",
        f"epochs={epochs}",
        *VARIANTS[variant],
        f"hydra.run.dir={run_dir}",
    ]


def train(
    model: str, variant: str, csv: Path, epochs: int, seed: int, run_dir: Path, extra: list[str]
) -> dict:
    """One ``seo-train`` run to its end: its wall and CPU time, the load around it, and the figures
    of its run directory.

    Raises:
        SystemExit: the command failed (with the end of its stderr).
    """
    argv = train_argv(model, variant, csv, epochs, seed, run_dir, extra)
    logs = run_dir.parent / f"{run_dir.name}.log"
    logs.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    with open(logs, "wb") as out:
        busy = busy_cpu_s()
        start = time.perf_counter()
        child = subprocess.Popen(
            argv, cwd=csv.parent, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        _, status, usage = os.wait4(child.pid, 0)  # the rusage of this child alone
        wall = time.perf_counter() - start
        busy = busy_cpu_s() - busy if busy is not None else None
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = "\n".join(logs.read_text(errors="replace").strip().splitlines()[-15:])
        sys.exit(f"{' '.join(argv)} exited with {child.returncode}:\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    others = max(busy - cpu, 0.0) if busy is not None else None
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "others_cpu_s": others,
        "others_cores": others / wall if others is not None else None,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    } | read_run(run_dir, variant)


def read_run(run_dir: Path, variant: str) -> dict:
    """The epoch's time, samples/s and padding fraction (``metrics.jsonl``), accuracy (``summary.json``),
    rows per split and max_length (``train.log``)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in rows if "speed/samples_per_second" in r and "epoch" in r]
    summary = json.loads((run_dir / "summary.json").read_text())
    text = (run_dir / "train.log").read_text()
    split = re.search(r"-> train (\d+), val (\d+), test (\d+)", text)
    if not split or not epochs:
        sys.exit(f"{run_dir}: no split sizes in train.log or no epoch row in metrics.jsonl")
    train_rows, val_rows, test_rows = (int(g) for g in split.groups())
    found = re.search(r"data\.max_length=null: (\d+) tokens", text)
    max_length = int(found.group(1)) if found else None
    if variant == "fixed":
        max_length = 128 if found is None else max_length
    last = epochs[-1]
    return {
        "epoch_s": train_rows / last["speed/samples_per_second"],
        "samples_per_second": last["speed/samples_per_second"],
        "epoch_s_all": [train_rows / e["speed/samples_per_second"] for e in epochs],
        "padding_fraction": last.get("speed/padding_fraction"),
        "val_accuracy": summary["metrics"].get(f"val/{TARGET}/accuracy"),
        "test_accuracy": summary["metrics"].get(f"test/{TARGET}/accuracy"),
        "val_loss": summary["metrics"].get("val/loss"),
        "train_loss": last.get("train/loss"),
        "max_length": max_length,
        "max_length_log": found.group(0) if found else None,
        "summary_wall_time_s": summary.get("wall_time_s"),
        "rows": {"train": train_rows, "val": val_rows, "test": test_rows},
    }


def settle(limit_s: float, threshold: float, window_s: float = 5.0) -> float | None:
    """Wait (at most ``limit_s``) until the machine's other processes take under ``threshold`` cores
    over ``window_s`` (this process is asleep meanwhile); the share of the last window."""
    waited, others = 0.0, None
    while waited < limit_s:
        before = busy_cpu_s()
        if before is None:
            time.sleep(window_s)
            return None
        time.sleep(window_s)
        waited += window_s
        others = (busy_cpu_s() - before) / window_s
        if others < threshold:
            break
    return others


def measured(
    model: str, variant: str, csv: Path, seed: int, round_: int, directory: Path, args: argparse.Namespace
) -> tuple[dict, list[dict]]:
    """One (model, variant) run of a round, run again (at most ``--retries`` times, once the machine is
    quiet) while other processes took more than ``--disturbed`` cores during it: the run kept, and the
    disturbed ones dropped."""
    dropped = []
    for attempt in range(args.retries + 1):
        name = f"{model}-{variant}-{round_}-{attempt}"
        run = train(model, variant, csv, args.epochs, seed, directory / "runs" / name, args.extra)
        others = run["others_cores"]
        run |= {"round": round_, "seed": seed, "attempt": attempt}
        run["disturbed"] = others is not None and others > args.disturbed
        log.info(
            "round %d/%d %s %s: epoch %.1f s (%.0f rows/s), wall %.1f s, padding %s, max_length %s, "
            "val acc %.4f; load %.2f -> %.2f, others %s cores",
            round_ + 1, args.repeats, model, variant, run["epoch_s"], run["samples_per_second"], run["wall_s"],
            "-" if run["padding_fraction"] is None else f"{run['padding_fraction']:.1%}", run["max_length"],
            run["val_accuracy"], run["load_before"], run["load_after"], "?" if others is None else f"{others:.2f}",
        )  # fmt: skip
        if not run["disturbed"] or attempt == args.retries:
            return run, dropped
        dropped.append(run | {"model": model, "variant": variant})
        log.warning(
            "%s %s: other processes took %.2f cores meanwhile; waiting for the machine to settle, then again",
            *(model, variant, others),
        )
        quiet = settle(args.settle_s, args.disturbed)
        log.info("others now take %s cores", "?" if quiet is None else f"{quiet:.2f}")
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------
# Summary


def summarise(runs: list[dict]) -> dict:
    """Medians of one (model, variant)'s kept runs (undisturbed, or the last attempt)."""
    keys = (
        "epoch_s",
        "wall_s",
        "cpu_s",
        "samples_per_second",
        "padding_fraction",
        "val_accuracy",
        "test_accuracy",
    )
    out = {k: statistics.median(r[k] for r in runs) for k in keys if all(r.get(k) is not None for r in runs)}
    out["val_accuracy_runs"] = [r["val_accuracy"] for r in runs]
    out["epoch_s_runs"] = [r["epoch_s"] for r in runs]
    out["max_length"] = sorted({r["max_length"] for r in runs})
    return out


def judge(results: dict, val_rows: int) -> dict:
    """The issue's three targets for one model: speed-up, accuracy, padding with buckets."""
    fixed = results["fixed"]
    speed_up = {v: fixed["epoch_s"] / results[v]["epoch_s"] for v in VARIANTS if v != "fixed"}
    by_round = {v: {r["round"]: r["epoch_s"] for r in results[v]["runs"]} for v in VARIANTS}
    per_round = {
        v: [by_round["fixed"][k] / by_round[v][k] for k in sorted(by_round[v]) if k in by_round["fixed"]]
        for v in speed_up
    }
    accuracy = {}
    for v in VARIANTS:
        if v == "fixed":
            continue
        p = fixed["val_accuracy"]
        binomial_se = math.sqrt(p * (1 - p) / val_rows)
        spread = [
            statistics.stdev(results[w]["val_accuracy_runs"])
            for w in ("fixed", v)
            if len(results[w]["val_accuracy_runs"]) > 1
        ]
        tolerance = 2 * max([binomial_se * math.sqrt(2), *spread])  # the difference of two estimates
        difference = results[v]["val_accuracy"] - p
        accuracy[v] = {
            "difference": difference,
            "tolerance": tolerance,
            "within": abs(difference) <= tolerance,
        }
    padding = results["buckets"]["padding_fraction"]
    return {
        "speed_up": speed_up,
        "speed_up_per_round": per_round,
        "speed_up_median_of_rounds": {v: statistics.median(r) for v, r in per_round.items()},
        "speed_up_target": SPEED_UP_TARGET,
        "speed_up_met": {v: s >= SPEED_UP_TARGET for v, s in speed_up.items()},
        "accuracy": accuracy,
        "padding_fraction_buckets": padding,
        "padding_target": PADDING_TARGET,
        "padding_met": padding is not None and padding < PADDING_TARGET,
    }


def table(results: dict, args: argparse.Namespace, rows: int) -> Table:
    out = Table(
        title=f"seo-train, {rows:,} headlines, {args.epochs} epoch(s), CPU ({os.cpu_count()} cores), "
        f"median of {args.repeats}; speed-up = fixed's epoch s / the variant's"
    )
    for column in ["model", "variant", "max_length", "epoch s", "speed-up", "(rounds)", "rows/s", "wall s",
                   "padding", "val acc", "test acc"]:  # fmt: skip
        out.add_column(column, justify="left" if column in ("model", "variant") else "right")
    for model, result in results.items():
        for variant in VARIANTS:
            r = result["variants"][variant]
            speed_up = result["targets"]["speed_up"].get(variant)
            rounds = result["targets"]["speed_up_per_round"].get(variant)
            out.add_row(
                model,
                variant,
                "/".join(str(m) for m in r["max_length"]),
                f"{r['epoch_s']:.1f}",
                f"{speed_up:.2f}x" if speed_up else "1x",
                f"{min(rounds):.1f}-{max(rounds):.1f}x" if rounds else "",
                f"{r['samples_per_second']:,.0f}",
                f"{r['wall_s']:.1f}",
                f"{r['padding_fraction']:.1%}" if r.get("padding_fraction") is not None else "-",
                f"{r['val_accuracy']:.4f}",
                f"{r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None else "-",
                end_section=variant == list(VARIANTS)[-1],
            )
    return out


def describe(frame: pd.DataFrame, truth: dict[str, np.ndarray], csv: Path, train_fraction: float) -> dict:
    """Words and tokens per headline, as seo-train's tokenizer (fitted on a training-size sample) cuts them."""
    from seo_cli.data.preprocess import _train_tokenizer

    words = frame["headline"].str.count(r"\S*\w\S*").to_numpy()
    train_rows = int(len(frame) * train_fraction)
    picked = np.random.default_rng(0).permutation(len(frame))
    tokenizer = _train_tokenizer(frame["headline"].iloc[picked[:train_rows]].tolist(), 8000)
    tokens = np.array([len(e.ids) for e in tokenizer.encode_batch(frame["headline"].tolist())])
    return {
        "rows": len(frame),
        "file_mb": csv.stat().st_size / 2**20,
        "clickbait_share": float(frame[TARGET].mean()),
        "label_agrees_with_frame": float((truth["frame_class"] == frame[TARGET].to_numpy()).mean()),
        "bayes_accuracy": float(truth["bayes_correct"].mean()),
        "words": {"min": int(words.min()), "mean": float(words.mean()), "max": int(words.max())},
        "distinct_words": int(frame["headline"].str.lower().str.split().explode().nunique()),
        "tokens": {
            "mean": float(tokens.mean()),
            "p50": float(np.percentile(tokens, 50)),
            "p99": float(np.percentile(tokens, 99)),
            "max": int(tokens.max()),
        },
        "tokens_per_word": float(tokens.sum() / words.sum()),
        "tokenizer_vocab": tokenizer.get_vocab_size(),
        "note": "tokens from a tokenizer fitted here on a random 70% (vocab 8,000), as seo-train fits it",
        "examples": frame.head(6).to_dict(orient="records"),
    }


def main() -> None:
    import seo_cli

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32_000, help="headlines in the CSV (70%% train)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; each figure the median")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run; the last one is timed")
    parser.add_argument("--models", nargs="+", default=MODELS, help="model config groups")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated headlines")
    parser.add_argument(
        "--disturbed", type=float, default=0.15,
        help="a run where other processes took more than this share of a core is run again",
    )  # fmt: skip
    parser.add_argument("--retries", type=int, default=2, help="re-runs of a disturbed run at most")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=300,
        help="before a re-run, wait at most this long for the machine to be quiet",
    )
    parser.add_argument("--out", "--output", dest="out", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep", type=Path, help="write the CSV and run directories here instead of a temp dir"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    # train.yaml's warm-up (20 optimizer steps) must be shorter than the run: only --rows under ~4,000 need less.
    steps = -(-int(args.rows * 0.7) // 128) * args.epochs
    args.extra = [f"warmup_steps={max(1, steps // 4)}"] if steps <= 40 else []

    load_before = os.getloadavg()[0]
    if load_before > 0.25 * (os.cpu_count() or 1):
        log.warning(
            "Load average %.1f on %d cores: other processes will slow the timings.",
            load_before,
            os.cpu_count(),
        )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seo-short-text-") as tmp:
        directory = args.keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        csv = directory / "headlines.csv"
        frame, truth = generate_headlines(args.rows, seed=args.seed)
        frame.to_csv(csv, index=False)
        data = describe(frame, truth, csv, 0.7)
        log.info(
            "wrote %s headlines: %.1f words, %.1f tokens each (p99 %.0f, max %d), %.2f tokens/word; Bayes accuracy %.3f",
            f"{args.rows:,}", data["words"]["mean"], data["tokens"]["mean"], data["tokens"]["p99"],
            data["tokens"]["max"], data["tokens_per_word"], data["bayes_accuracy"],
        )  # fmt: skip

        if args.repeats > 1:  # the first seo-train of an invocation has run slower (epoch too): not timed
            train(
                args.models[0],
                "fixed",
                csv,
                args.epochs,
                BASE_SEED,
                directory / "runs" / "warm-up",
                args.extra,
            )
        runs = {m: {v: [] for v in VARIANTS} for m in args.models}
        disturbed = []
        order = list(VARIANTS)
        for round_ in range(args.repeats):
            for model in args.models:
                shift = round_ % len(order)
                for variant in order[shift:] + order[:shift]:
                    seed = BASE_SEED + round_
                    kept, dropped = measured(model, variant, csv, seed, round_, directory, args)
                    runs[model][variant].append(kept)
                    disturbed += dropped
        val_rows = next(iter(next(iter(runs.values())).values()))[0]["rows"]["val"]
        results = {}
        for model in args.models:
            variants = {v: summarise(runs[model][v]) | {"runs": runs[model][v]} for v in VARIANTS}
            for v in VARIANTS:
                argv = train_argv(
                    model, v, Path("headlines.csv"), args.epochs, BASE_SEED, "<dir>", args.extra
                )
                variants[v]["command"] = shlex.join(["seo-train", *argv[len(command("seo-train")) :]])
            results[model] = {"variants": variants, "targets": judge(variants, val_rows)}

    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table(results, args, args.rows))
    for model, result in results.items():
        t = result["targets"]
        console.print(
            f"{model}: speed-up "
            + ", ".join(
                f"{v} {t['speed_up'][v]:.2f}x (rounds {min(t['speed_up_per_round'][v]):.2f}-"
                f"{max(t['speed_up_per_round'][v]):.2f}x)"
                for v in t["speed_up"]
            )
            + f" (target >= {SPEED_UP_TARGET:g}x); val accuracy difference vs fixed "
            + ", ".join(
                f"{v} {a['difference']:+.4f} ({'within' if a['within'] else 'OUTSIDE'} +-{a['tolerance']:.4f})"
                for v, a in t["accuracy"].items()
            )
            + f"; padding with buckets {t['padding_fraction_buckets']:.1%} (target < {PADDING_TARGET:.0%})"
        )
    report = {
        "benchmark": "seo-train epoch time on short text, fixed padding to 128 vs longest vs length buckets (issue 19); "
        "see the module docstring",
        "command": " ".join(["python", "benchmarks/short_text.py", *sys.argv[1:]]),
        "machine": machine(),
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        "versions": {
            "python": platform.python_version(),
            **{p: version(p) for p in ("seo-cli", "torch", "tokenizers", "pandas")},
        },
        "git": git_revision(),
        "seo_cli_imported_from": str(Path(seo_cli.__file__).resolve().parent),  # the children import the same
        "rows": args.rows,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "data": data,
        "settings": {
            "common_overrides": COMMON,
            "variants": VARIANTS,
            "batch_size": "train.yaml's default (128)",
            "models": "the default configs of conf/model/<model>.yaml",
        },
        "measure": {
            "epoch_s": "training rows / speed/samples_per_second of the (last) epoch row of metrics.jsonl",
            "speed_up": "fixed's median epoch_s / the variant's median epoch_s (same invocation)",
            "speed_up_per_round": "fixed's epoch_s / the variant's in each round (same seed and split)",
            "wall_s": "the whole seo-train command",
            "padding_fraction": "speed/padding_fraction of the epoch row",
            "val_accuracy": f"val/{TARGET}/accuracy of summary.json (last epoch)",
            "test_accuracy": f"test/{TARGET}/accuracy of summary.json (best checkpoint)",
            "others_cpu_s": "busy CPU seconds of the machine (/proc/stat) during the run less the command's own",
            "accuracy tolerance": "2 x max(sqrt(2) x binomial SE of the val split at fixed's accuracy, "
            "stdev of either variant's repeats)",
        },
        "total_s": time.perf_counter() - started,
        "results": results,
        "disturbed_runs": disturbed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("Wrote %s", args.out)


if __name__ == "__main__":
    main()
