"""data=parquet_dir: Parquet shards streamed, never read whole (seo_cli/data/shards.py, parquet.py).

Every training row once per epoch across 2 gloo ranks x 2 DataLoader workers (asserted on row ids), the
seeded shuffle and its buffer, a batch-exact start inside an epoch, a run stopped mid-epoch and resumed
ending with the straight run's weights, splits from a column or from directories, the sample the
preprocessing is fitted on, seo-eval and seo-predict on shards, and one sentence for each bad shard.
The data is tiny (900 rows in 3 shards of row groups of 70), so the file runs in seconds.
"""

import json
import logging
import multiprocessing
import os
import re
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
from helpers.commands import run_command
from helpers.fault_inject import injected
from omegaconf import OmegaConf

from seo_cli.checkpoint import load_checkpoint
from seo_cli.config import DataConfig, TargetConfig
from seo_cli.data.parquet import SPLITS, prepare_stream
from seo_cli.data.preprocess import Preprocessor
from seo_cli.data.seo_pages import generate_seo_pages
from seo_cli.data.shards import targets_of
from seo_cli.distributed import gather_rows
from seo_cli.errors import UserError
from seo_cli.train import train
from seo_cli.trainer import TrainingInterrupted
from seo_cli.validation import check_train_config

TEXT, NUMERIC = ["title", "meta_description"], ["backlinks", "page_speed", "word_count"]
TARGETS = [TargetConfig("intent", "classification"), TargetConfig("ctr", "regression")]
ROWS, SHARDS, ROW_GROUP = 900, 3, 70


def pages() -> pd.DataFrame:
    frame = generate_seo_pages(ROWS, seed=5)
    frame["split"] = np.random.default_rng(1).choice(list(SPLITS), ROWS, p=[0.7, 0.15, 0.15])
    return frame


def write_shards(frame: pd.DataFrame, directory: Path, shards: int = SHARDS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(len(frame)), shards)):
        table = pa.Table.from_pandas(frame.iloc[part], preserve_index=False)
        pq.write_table(table, directory / f"part-{i:02d}.parquet", row_group_size=ROW_GROUP)
    return directory


def config(path: Path, **knobs) -> DataConfig:
    knobs = {"split_column": "split", "fit_sample_rows": 300, "shuffle_buffer": 50, "max_length": 16} | knobs
    return DataConfig(
        source="parquet_dir",
        path=str(path),
        text_columns=TEXT,
        numeric_columns=NUMERIC,
        categorical_columns=["cms"],
        targets=TARGETS,
        **knobs,
    )


def batches(data, split="train", rank=None, workers=0, seed=3, batch_size=16, buffer=50, shuffle=True):
    return data.batches(
        split,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        shuffle_buffer=buffer,
        shard=(rank, 2) if rank is not None else None,
        pad_to_multiple_of=1,
        pad_id=0,
        num_workers=workers,
        pin_memory=False,
        row_ids=True,
    )


def epoch_ids(stream, epoch: int = 0, start: int = 0) -> list[list[int]]:
    stream.set_epoch(epoch)
    return [ids.tolist() for _, _, ids in stream.iter_from(start)]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pages()


@pytest.fixture(scope="module")
def shards(frame, tmp_path_factory) -> Path:
    return write_shards(frame, tmp_path_factory.mktemp("shards") / "crawl")


@pytest.fixture(scope="module")
def streamed(shards):
    return prepare_stream(config(shards), seed=0)


def train_ids(frame: pd.DataFrame) -> set[int]:
    return set(np.flatnonzero(frame["split"].to_numpy() == "train").tolist())


def _rank(rank: int, init: str, data, out: str) -> None:
    """One DDP rank (a forked child): its row ids per batch for two epochs, gathered on rank 0."""
    code = 0
    try:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
        stream = batches(data, rank=rank, workers=2)
        epochs = [epoch_ids(stream, epoch) for epoch in range(2)]
        # Evaluation: dealt row by row as DistributedSampler deals (135 test rows: rank 1 repeats the first to
        # make 68 each); gather_rows puts them back in file order and drops the repeat.
        val = batches(data, "test", rank=rank, workers=2, shuffle=False, batch_size=32)
        ids = torch.cat([ids for _, _, ids in val])
        gathered = [None, None]
        dist.all_gather_object(
            gathered,
            {"epochs": epochs, "len": len(stream), "eval": gather_rows(ids, val.total_rows).tolist()},
        )
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - the parent reads the story from the file
        Path(f"{out}.{rank}.err").write_text(traceback.format_exc())
        code = 1
    os._exit(code)


def test_every_training_row_once_per_epoch_with_2_ranks_x_2_workers(streamed, frame, tmp_path):
    out = tmp_path / "ids.json"
    context = multiprocessing.get_context("fork")  # torch and the scanned shards are already here
    ranks = [
        context.Process(target=_rank, args=(r, str(tmp_path / "init"), streamed, str(out))) for r in (0, 1)
    ]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(60)
    errors = [p.read_text() for p in tmp_path.glob("ids.json.*.err")]
    assert not errors and all(p.exitcode == 0 for p in ranks), errors
    gathered = json.loads(out.read_text())
    expected = train_ids(frame)
    assert len(expected) == streamed.rows("train") == 617  # 308 and 309 rows: 20 batches of 16 on each rank
    orders = []
    for epoch in range(2):
        seen = [row for rank in gathered for batch in rank["epochs"][epoch] for row in batch]
        assert len(seen) == len(expected) and set(seen) == expected  # none twice, none left out
        # Every rank takes the same steps; each rank's rows are its contiguous share of the epoch's order.
        assert [len(rank["epochs"][epoch]) for rank in gathered] == [gathered[0]["len"]] * 2 == [20, 20]
        orders.append(seen)
    assert orders[0] != orders[1]  # each epoch its own order
    test = np.flatnonzero(frame["split"].to_numpy() == "test").tolist()
    assert gathered[0]["eval"] == gathered[1]["eval"] == test
    # The loader's round robin over the workers yields batch k of the rank as one process would.
    assert gathered[0]["epochs"][0] == epoch_ids(batches(streamed, rank=0, workers=0))


def test_a_rank_one_row_short_splits_its_last_batch_to_take_the_same_steps(streamed, frame):
    """617 training rows: 308 on rank 0 and 309 on rank 1. In batches of 308, rank 1 takes 308 + 1 rows;
    rank 0's 308 rows would be one step, so its last batch is split (307 + 1): both take 2 steps."""
    ranks = [epoch_ids(batches(streamed, rank=r, batch_size=308)) for r in (0, 1)]
    assert [[len(batch) for batch in rank] for rank in ranks] == [[307, 1], [308, 1]]
    assert sorted(row for rank in ranks for batch in rank for row in batch) == sorted(train_ids(frame))
    with pytest.raises(UserError, match="cannot be dealt to 2 processes in equal steps of batch_size=1"):
        batches(streamed, rank=0, batch_size=1)


def test_the_shuffle_is_seeded_row_groups_and_buffer(streamed, frame):
    first = epoch_ids(batches(streamed))
    flat = [row for batch in first for row in batch]
    assert first == epoch_ids(batches(streamed))  # the same seed and epoch: the same batches
    assert flat != sorted(flat)
    assert epoch_ids(batches(streamed, seed=4)) != first
    assert epoch_ids(batches(streamed), epoch=1) != first
    # The buffer: the first 50 rows of the stream are the first 50 training rows of the epoch's row-group
    # order, permuted; a buffer of 1 keeps that order exactly.
    layout = streamed.layouts["train"]
    groups = layout.order(3, 0, shuffle=True)
    ends = [*layout.shards.first_row[1:], ROWS]  # row group g holds rows first_row[g] to ends[g]
    in_order = [
        row
        for g in groups
        for row in range(int(layout.shards.first_row[g]), int(ends[g]))
        if frame["split"].iloc[row] == "train"
    ]
    assert set(flat[:50]) == set(in_order[:50]) and flat[:50] != in_order[:50]
    unbuffered = [row for batch in epoch_ids(batches(streamed, buffer=1)) for row in batch]
    assert unbuffered == in_order
    assert list(groups) != sorted(groups)  # the row groups' order is drawn too


@pytest.mark.parametrize("start", [1, 3, 7, 19])
def test_an_epoch_started_at_batch_k_is_the_rest_of_the_full_epoch(streamed, start):
    full = epoch_ids(batches(streamed, rank=1, workers=2), epoch=1)
    assert epoch_ids(batches(streamed, rank=1, workers=2), epoch=1, start=start) == full[start:]


def test_split_column_and_split_directories_give_the_same_splits(frame, shards, tmp_path):
    root = tmp_path / "by_dir"
    for name in SPLITS:
        write_shards(frame[frame["split"] == name].drop(columns="split"), root / name, shards=2)
    by_dir = prepare_stream(
        config(root / "train", split_column=None, val_path=str(root / "val"), test_path=str(root / "test")),
        seed=0,
    )
    by_column = prepare_stream(config(shards), seed=0)
    counts = frame["split"].value_counts()
    for name in SPLITS:
        assert by_dir.rows(name) == by_column.rows(name) == counts[name]
    # The same training rows in the same order: the same seeded sample, the same fitted preprocessing.
    assert by_dir.preprocessor.to_state() == by_column.preprocessor.to_state()
    assert by_dir.class_counts == by_column.class_counts
    val = [batches(d, "val", shuffle=False) for d in (by_dir, by_column)]
    for (x, y, _), (x2, y2, _) in zip(*val, strict=True):
        torch.testing.assert_close((x, y), (x2, y2), rtol=0, atol=0)


def test_preprocessing_is_fitted_on_a_seeded_sample_of_fit_sample_rows(frame, shards, tmp_path, caplog):
    rare = frame.copy()
    train_rows = np.flatnonzero(rare["split"].to_numpy() == "train")
    rare.loc[train_rows[-1], "intent"] = "rare"  # one training row of a class the sample will likely miss
    directory = write_shards(rare, tmp_path / "rare")
    with caplog.at_level(logging.INFO, logger="seo_cli.data.parquet"):
        data = prepare_stream(config(directory, fit_sample_rows=120), seed=7)
    assert "seeded sample of 120 of the 617 training rows (data.fit_sample_rows=120)" in caplog.text
    picked = np.sort(np.random.default_rng(7).choice(617, 120, replace=False))
    sample = rare.iloc[train_rows[picked]]
    assert "rare" not in set(sample["intent"])
    expected = Preprocessor.fit(
        sample[TEXT + NUMERIC + ["cms", "intent", "ctr"]].reset_index(drop=True),
        text_columns=TEXT,
        numeric_columns=NUMERIC,
        categorical_columns=["cms"],
        targets=targets_of(data.config),
        max_length=16,
        vocab_size=data.config.vocab_size,
    )
    assert data.preprocessor.numeric_mean == expected.numeric_mean
    assert data.preprocessor.tokenizer_json == expected.tokenizer_json
    assert data.preprocessor.target_scale == expected.target_scale
    # The classes come from every training row, so the rare one is a class, counted once.
    assert "rare" in data.preprocessor.class_names["intent"]
    counts = dict(zip(data.preprocessor.class_names["intent"], data.class_counts["intent"], strict=True))
    assert counts["rare"] == 1 and sum(counts.values()) == 617


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    return train(run_config(shards), run_dir), run_dir


def run_config(shards: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from seo_cli.config import register_configs

    register_configs()
    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "data=parquet_dir",
                f"data.path={shards}",
                "data.split_column=split",
                f"data.text_columns=[{','.join(TEXT)}]",
                f"data.numeric_columns=[{','.join(NUMERIC)}]",
                "data.categorical_columns=[cms]",
                "data.targets=[{name:intent,type:classification},{name:ctr,type:regression}]",
                "data.fit_sample_rows=300",
                "data.shuffle_buffer=100",
                "data.max_length=16",
                "data.vocab_size=500",
                "model=seo_multitask",
                "batch_size=32",  # 20 steps an epoch
                "epochs=2",
                "logger=none",
                "trainer.progress=plain",
                "device=cpu",
                *overrides,
            ],
        )


def test_a_run_stopped_mid_epoch_and_resumed_ends_with_the_straight_runs_weights(
    shards, straight, tmp_path, caplog
):
    _, straight_dir = straight
    run_dir = tmp_path / "run"
    with injected(signal_at_step=27), pytest.raises(TrainingInterrupted):
        train(run_config(shards), run_dir)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]["batches_done"] == 8
    with caplog.at_level(logging.INFO, logger="seo_cli.data.parquet"):
        train(run_config(shards, "resume=auto"), run_dir)
    assert (
        "Resuming epoch 2 at batch 8: " in caplog.text
        and "shuffle window 2 (seed [42, 1, 0, 2])" in caplog.text
    )
    expected = load_checkpoint(straight_dir / "checkpoints" / "last.pt")["model"]
    got = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_seo_eval_streams_the_test_split_and_agrees_with_training(straight, tmp_path):
    summary, run_dir = straight
    done = run_command(
        "evaluate",
        f"checkpoint={run_dir}/checkpoints/best.pt",
        "bootstrap=0",
        "report=false",
        f"hydra.run.dir={tmp_path}",
    )
    assert done.code == 0, done.output[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["rows"] == 135
    assert metrics["metrics"]["test/loss"] == pytest.approx(summary["metrics"]["test/loss"], abs=1e-6)


def test_seo_predict_scores_a_directory_of_shards(straight, frame, tmp_path):
    _, run_dir = straight
    bad = frame.copy()
    bad["backlinks"] = bad["backlinks"].astype(float)
    bad.loc[5, "backlinks"] = np.nan  # trained without imputation: this row is rejected
    shards = write_shards(bad, tmp_path / "new")
    output = tmp_path / "scores.parquet"
    done = run_command(
        "predict", f"checkpoint={run_dir}/checkpoints/best.pt", f"input={shards}", f"output={output}"
    )
    assert done.code == 0, done.output[-3000:]
    scores = pd.read_parquet(output)
    assert len(scores) == ROWS - 1 and 6 not in set(scores["row"]) and scores["row"].iloc[-1] == ROWS
    rejects = pd.read_csv(tmp_path / "scores.rejects.csv")
    assert rejects["row"].tolist() == [6] and "backlinks" in rejects["reason"].iloc[0]


def test_shards_whose_types_differ_within_a_kind_stream_as_one(frame, streamed, tmp_path):
    """Writers differ: string or large_string, dictionary-encoded or not, int32 or int64 or double."""
    directory = write_shards(frame, tmp_path / "mixed")
    for name, changes in {
        "part-01.parquet": {
            "split": lambda c: c.dictionary_encode(),
            "backlinks": lambda c: c.cast(pa.int32()),
        },
        "part-02.parquet": {
            "title": lambda c: c.cast(pa.string()),
            "intent": lambda c: c.dictionary_encode(),
        },
    }.items():
        part = pq.read_table(directory / name)
        for column, change in changes.items():
            part = part.set_column(part.schema.get_field_index(column), column, change(part.column(column)))
        pq.write_table(part, directory / name, row_group_size=ROW_GROUP)
    mixed, reference = prepare_stream(config(directory), seed=0), streamed
    assert mixed.preprocessor.to_state() == reference.preprocessor.to_state()
    for (x, y, ids), (x2, y2, ids2) in zip(
        batches(mixed, buffer=400).iter_from(0), batches(reference, buffer=400).iter_from(0), strict=True
    ):
        assert torch.equal(ids, ids2)
        torch.testing.assert_close((x, y), (x2, y2), rtol=0, atol=0)


def broken(frame: pd.DataFrame, case: str, directory: Path) -> Path:
    """A directory of shards with one fault."""
    frame = frame.copy()
    if case == "missing column":
        frame = frame.drop(columns="cms")
    elif case == "list column":
        frame["title"] = [["a", "b"]] * len(frame)
    elif case == "text in a numeric column":
        frame["backlinks"] = frame["backlinks"].astype(str)
    elif case == "bad split value":
        frame.loc[400, "split"] = "holdout"
    elif case == "empty target":
        frame.loc[400, "intent"] = None
    elif case == "infinite number":
        frame["page_speed"] = frame["page_speed"].astype(float)
        frame.loc[400, "page_speed"] = np.inf
    elif case == "class only in test":
        frame.loc[400, ["intent", "split"]] = ["brand-new", "test"]
    write_shards(frame, directory)
    # string and large_string are one kind (the split column), text and numbers are not (cms)
    if case == "types differ between shards":
        part = pq.read_table(directory / "part-02.parquet")
        split = part.column("split").cast(pa.string())
        cms = pa.array(np.arange(part.num_rows) % 3)
        part = part.set_column(part.schema.get_field_index("split"), "split", split)
        part = part.set_column(part.schema.get_field_index("cms"), "cms", cms)
        pq.write_table(part, directory / "part-02.parquet")
    if case == "not Parquet":
        (directory / "part-01.parquet").write_bytes(b"not a parquet file")
    return directory


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "missing column",
            "data.categorical_columns names column 'cms', which {dir}/part-00.parquet (data.path) does not have",
        ),
        ("list column", "column 'title' of {dir}/part-00.parquet is of type list<"),
        (
            "text in a numeric column",
            "numeric column 'backlinks' of {dir}/part-00.parquet is of type large_string, not numbers",
        ),
        (
            "types differ between shards",
            "column 'cms' is of type int64 in {dir}/part-02.parquet but large_string in {dir}/part-00.parquet",
        ),
        ("not Parquet", "cannot read {dir}/part-01.parquet as Parquet"),
        (
            "bad split value",
            "data.split_column 'split' holds 'holdout' at row 101 of {dir}/part-01.parquet; its values must be train, val or test.",
        ),
        (
            "empty target",
            "target 'intent' is empty at row 101 of {dir}/part-01.parquet; fill it in, or set data.missing=impute",
        ),
        ("infinite number", "numeric column 'page_speed' holds inf at row 101 of {dir}/part-01.parquet"),
        (
            "class only in test",
            "class 'brand-new' of target 'intent' is in the test split (row 101 of {dir}/part-01.parquet) but never in the training rows",
        ),
    ],
)
def test_a_bad_shard_is_one_sentence_naming_file_column_and_fix(frame, tmp_path, case, message):
    directory = broken(frame, case, tmp_path / "bad")
    with pytest.raises(UserError) as raised:
        prepare_stream(config(directory), seed=0)
    assert message.format(dir=directory) in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            (),
            "data.source=parquet_dir takes its splits from a column or from directories, never from random rows",
        ),
        (
            ("data.split_column=split", "data.val_path=v"),
            "data.split_column and data.val_path / data.test_path both choose",
        ),
        (("data.split_column=split", "data.shuffle_buffer=0"), "data.shuffle_buffer=0 must be at least 1."),
        (
            ("data.split_column=split", "data.fit_sample_rows=10"),
            "data.fit_sample_rows=10 must be at least 100.",
        ),
        (
            ("data.split_column=split", "data.placement=device"),
            "data.placement=device keeps a split in memory",
        ),
        (
            ("data.split_column=split", "debug=overfit"),
            "trainer.overfit_batches trains on the first batches held in memory",
        ),
    ],
)
def test_config_mistakes_are_named_before_any_data_loads(shards, overrides, message):
    cfg = run_config(shards, *overrides)
    OmegaConf.set_struct(cfg, False)
    if not any(o.startswith("data.split_column") for o in overrides):
        cfg.data.split_column = None
    with pytest.raises(UserError, match=re.escape(message)):
        check_train_config(cfg)


def test_the_command_line_says_one_sentence_and_exits_1(shards, tmp_path):
    directory = broken(pages(), "bad split value", tmp_path / "bad")
    done = run_command(
        "train",
        "data=parquet_dir",
        f"data.path={directory}",
        "data.split_column=split",
        "data.text_columns=[title]",
        "data.targets=[{name:intent,type:classification}]",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert done.code == 1
    assert "holds 'holdout' at row 101 of" in done.output and "Traceback" not in done.output


def test_more_classes_than_max_classes_are_refused_while_scanning(shards):
    with pytest.raises(
        UserError, match=r"classification target 'intent' has more than data.max_classes=3 classes"
    ):
        prepare_stream(config(shards, max_classes=3), seed=0)
