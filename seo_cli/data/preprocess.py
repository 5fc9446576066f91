"""Preprocessing fitted on the training split only, and stored in checkpoints as plain data.

Numeric columns are standardised (optionally after a Yeo-Johnson power transform that makes skewed
counts such as backlinks or word counts close to normal), categorical columns are coded with 0 as the "unknown" slot, the
text columns are joined with ``[SEP]`` and tokenized by a byte-pair-encoding tokenizer (Hugging Face
``tokenizers``) trained on the training texts, classification targets are label-encoded with their
class names kept, multilabel targets become one 0/1 column per label of the training split (the
labels of a cell joined by ``data.label_separator``), and regression targets are standardised (predictions are mapped back to the
original units before any metric is computed).

The encoding itself is numpy (``encode_inputs``); torch is imported only where tensors are made, so
``seo-predict backend=onnx`` applies exactly this preprocessing without torch.
"""

import dataclasses
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.preprocessing import PowerTransformer, StandardScaler
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

if TYPE_CHECKING:
    from torch import Tensor

    from seo_cli.config import DataConfig

from seo_cli.data.spec import (
    CLASSIFICATION,
    MULTILABEL,
    RANKING,
    RATE,
    REGRESSION,
    TRIALS_KEY,
    WEIGHT_KEY,
    InputSpec,
    Target,
)
from seo_cli.errors import UserError

log = logging.getLogger(__name__)

PAD, UNK, SEP = "[PAD]", "[UNK]", "[SEP]"
TOKENIZER_SAMPLE = 200_000  # training texts the tokenizer learns its vocabulary from, at most
ENCODE_CHUNK = 20_000  # rows tokenized at a time


@dataclass
class TargetEncoding:
    name: str
    type: str
    classes: list[str] = field(default_factory=list)  # classification: class names in code order; multilabel: labels
    mean: float = 0.0  # regression: training mean and standard deviation (a rate keeps 0 and 1: it is not scaled)
    std: float = 1.0
    separator: str = ""  # multilabel: what joins the labels of a cell (data.label_separator)


@dataclass
class Preprocessor:
    """Everything fitted on the training rows; ``to_state``/``from_state`` round-trip it as plain data."""

    text_columns: list[str]
    numeric_columns: list[str]
    categorical_columns: list[str]
    numeric_mean: list[float]
    numeric_scale: list[float]
    numeric_power: list[float]  # Yeo-Johnson lambda per numeric column; empty without the power transform
    categories: dict[str, list[str]]
    tokenizer_json: str
    max_length: int
    targets: list[TargetEncoding]
    numeric_fill: list[float] = field(
        default_factory=list
    )  # training median per numeric column, for empty cells
    # A pretrained encoder's config, tokenizer, padding id and separator (seo_cli.pretrained); {}: the
    # fitted BPE tokenizer above.
    encoder: dict = field(default_factory=dict)
    # Label columns that are not targets: the row weights and the trials of rate targets; "" when not used.
    # Stored so seo-eval weighs a new file's rows as training weighed its own.
    weight_column: str = ""
    trials_column: str = ""
    group_column: str = ""  # data.group_column of the ranking targets; "" without one

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        *,
        text_columns: list[str],
        numeric_columns: list[str],
        categorical_columns: list[str],
        targets: list[Target],
        max_length: int | None,
        vocab_size: int,
        numeric_scaling: str = "standard",
        encoder: dict | None = None,
        group_column: str | None = None,
        weight_column: str | None = None,
        trials_column: str | None = None,
        label_separator: str = "|",
    ) -> "Preprocessor":
        """Fit on the training rows only, so no statistic of validation or test rows leaks into training.

        Args:
            max_length: tokens kept per row; None: from the data (``length_from_data``), at most the
                encoder's ``model_max_length``.
            numeric_scaling: standard (z-score) | power (Yeo-Johnson, then z-score).
            encoder: a pretrained encoder's files (``seo_cli.pretrained.encoder_files``): its tokenizer
                replaces the fitted one.
            group_column: the column whose values group the rows a ranking target orders (kept only
                when there is a ranking target).
            weight_column, trials_column: the row weights and the trials of rate targets, kept for
                ``transform_targets`` (nothing is fitted on them: the scaling above is unweighted).
            label_separator: what joins the labels of a multilabel target's cell.

        Raises:
            UserError: a multilabel target without any label in the training split.
        """
        mean, scale, power, fill = _fit_numeric(frame, numeric_columns, numeric_scaling)
        categories = {
            col: sorted(as_text_values(frame[col]).unique().tolist()) for col in categorical_columns
        }
        tokenizer_json, max_length = _fit_text(frame, text_columns, vocab_size, max_length, encoder)
        encodings = _encode_targets(frame, targets, label_separator)
        return cls(
            text_columns=list(text_columns),
            numeric_columns=list(numeric_columns),
            categorical_columns=list(categorical_columns),
            numeric_mean=mean,
            numeric_scale=scale,
            numeric_power=power,
            categories=categories,
            tokenizer_json=tokenizer_json,
            max_length=max_length or 1,
            targets=encodings,
            numeric_fill=fill,
            encoder=dict(encoder) if encoder and text_columns else {},
            group_column=(group_column or "") if any(t.type == RANKING for t in targets) else "",
            weight_column=weight_column or "",
            trials_column=trials_column or "",
        )

    @classmethod
    def fit_data(cls, frame: pd.DataFrame, data: "DataConfig", encoder: dict | None) -> "Preprocessor":
        """``fit`` with the columns, targets and knobs of the ``data`` config section (tables and shards alike)."""
        return cls.fit(
            frame,
            text_columns=list(data.text_columns),
            numeric_columns=list(data.numeric_columns),
            categorical_columns=list(data.categorical_columns),
            targets=[Target(t.name, str(t.type)) for t in data.targets],
            max_length=data.max_length,
            vocab_size=data.vocab_size,
            numeric_scaling=data.numeric_scaling,
            encoder=encoder,
            group_column=data.group_column,
            weight_column=data.weight_column,
            trials_column=data.trials_column,
            label_separator=data.label_separator,
        )

    @property
    def input_spec(self) -> InputSpec:
        if self.encoder:
            vocab = self.encoder["config"]["vocab_size"]
        else:
            vocab = Tokenizer.from_str(self.tokenizer_json).get_vocab_size() if self.tokenizer_json else 0
        return InputSpec(
            num_numeric=len(self.numeric_columns),
            categorical_cardinalities=[len(self.categories[c]) + 1 for c in self.categorical_columns],
            vocab_size=vocab,
            max_length=self.max_length if self.tokenizer_json or self.encoder else 0,
            pad_id=self.encoder["pad_id"] if self.encoder else 0,
            encoder_config=self.encoder.get("config"),
        )

    @property
    def heads(self) -> dict[str, int]:
        """Output size of each target's head: the number of classes or labels, or 1 for regression and rate."""
        return {t.name: (len(t.classes) if t.type in (CLASSIFICATION, MULTILABEL) else 1) for t in self.targets}

    @property
    def target_scale(self) -> dict[str, tuple[float, float]]:
        """Per regression target its training (mean, std); rate and ranking targets are kept as they are: (0, 1)."""
        return {t.name: (t.mean, t.std) for t in self.targets if t.type not in (CLASSIFICATION, MULTILABEL)}

    @property
    def class_names(self) -> dict[str, list[str]]:
        return {t.name: t.classes for t in self.targets if t.type == CLASSIFICATION}

    @property
    def label_names(self) -> dict[str, list[str]]:
        """Per multilabel target, its labels in column order."""
        return {t.name: t.classes for t in self.targets if t.type == MULTILABEL}

    def transform_inputs(self, frame: pd.DataFrame) -> "dict[str, Tensor]":
        """The model's input tensors for ``frame``: ``encode_inputs`` as torch tensors (no copy)."""
        import torch

        return {key: torch.from_numpy(value) for key, value in self.encode_inputs(frame).items()}

    def encode_inputs(self, frame: pd.DataFrame, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """The model's inputs as arrays: ``numeric`` float32 ``[rows, columns]`` (imputed, transformed,
        standardised), ``categorical`` int64 codes (0 = unseen), ``tokens`` int64 ``[rows, max_length]``;
        only those in ``keys`` when given (a graph that reads no text need not tokenize)."""
        wanted = set(keys) if keys is not None else {"numeric", "categorical", "tokens"}
        inputs: dict[str, np.ndarray] = {}
        if self.numeric_columns and "numeric" in wanted:
            x = frame[self.numeric_columns].to_numpy(dtype=np.float64)
            if self.numeric_fill:
                x = np.where(np.isnan(x), np.asarray(self.numeric_fill), x)
            if self.numeric_power:
                transformer = PowerTransformer(method="yeo-johnson", standardize=False)
                # A fitted transformer is its lambdas: set them rather than refit on these rows.
                transformer.lambdas_ = np.asarray(self.numeric_power)
                transformer.n_features_in_ = len(self.numeric_power)
                x = transformer.transform(x)
            x = (x - np.asarray(self.numeric_mean)) / np.asarray(self.numeric_scale)
            inputs["numeric"] = x.astype(np.float32)
        if self.categorical_columns and "categorical" in wanted:
            codes = [
                # Unseen categories map to 0, the unknown slot; known ones to 1..n.
                pd.Index(self.categories[col]).get_indexer(as_text_values(frame[col])).astype(np.int64) + 1
                for col in self.categorical_columns
            ]
            inputs["categorical"] = np.stack(codes, axis=1)
        if (self.tokenizer_json or self.encoder) and "tokens" in wanted:
            tokenizer = Tokenizer.from_str(self.encoder["tokenizer_json"] if self.encoder else self.tokenizer_json)
            tokenizer.enable_truncation(self.max_length)
            pad_id, pad = (self.encoder["pad_id"], tokenizer.id_to_token(self.encoder["pad_id"]) or PAD) if self.encoder else (0, PAD)
            tokenizer.enable_padding(pad_id=pad_id, pad_token=pad, length=self.max_length)
            separator = self.encoder["sep"] if self.encoder else SEP
            # In chunks: an Encoding object holds tokens, offsets and masks besides the ids, several KB
            # per row, so a million of them at once would need gigabytes.
            encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: no offsets
            ids = np.empty((len(frame), self.max_length), dtype=np.int64)
            for start in range(0, len(frame), ENCODE_CHUNK):
                chunk = frame.iloc[start : start + ENCODE_CHUNK]
                ids[start : start + len(chunk)] = [
                    e.ids for e in encode(_joined_text(chunk, self.text_columns, separator))
                ]
            inputs["tokens"] = ids
        return inputs

    def transform_targets(self, frame: pd.DataFrame, split: str = "this split") -> "dict[str, Tensor]":
        """Encode the target columns: class codes, standardised values, or a rate target's observed rate
        (successes / trials, 0 where there were no trials); with ``weight_column`` the row weights under
        ``WEIGHT_KEY``, with ``trials_column`` the trials under ``TRIALS_KEY`` (float32 each). The values
        were checked when the rows were read (``seo_cli.data.pipeline``).

        Raises:
            UserError: a classification value that the training split never saw.
        """
        import torch

        out: dict[str, Tensor] = {}
        for t in self.targets:
            values = frame[t.name]
            if t.type == RANKING:
                out[t.name] = torch.from_numpy(np.stack([values.to_numpy(np.int64), self.group_codes(frame)], axis=1))
            elif t.type == CLASSIFICATION:
                labels = as_text_values(values)
                # get_indexer, not pd.Categorical: there values outside the categories are deprecated.
                codes = pd.Index(t.classes).get_indexer(labels).astype(np.int64)
                if (codes < 0).any():
                    bad = labels[codes < 0].iloc[0]
                    raise UserError(
                        f"target {t.name} has class {bad!r} in {split} but not in the training split; "
                        f"add training rows of that class or give data.split_column so every class is trained on."
                    )
                out[t.name] = torch.from_numpy(codes)
            elif t.type == MULTILABEL:
                out[t.name] = torch.from_numpy(self.multi_hot(t, values, split))
            elif t.type == RATE:
                successes = values.to_numpy(dtype=np.float64)
                trials = frame[self.trials_column].to_numpy(dtype=np.float64)
                rate = np.divide(successes, trials, out=np.zeros(len(frame)), where=trials > 0)
                out[t.name] = torch.from_numpy(rate.astype(np.float32))
            else:
                y = (values.to_numpy(dtype=np.float64) - t.mean) / t.std
                out[t.name] = torch.from_numpy(y.astype(np.float32))
        for key, column in ((WEIGHT_KEY, self.weight_column), (TRIALS_KEY, self.trials_column)):
            if column:
                out[key] = torch.from_numpy(frame[column].to_numpy(dtype=np.float32))
        return out

    def group_codes(self, frame: pd.DataFrame) -> np.ndarray:
        """int64 code of each row's ``group_column`` value, in order of first appearance (equal values, equal codes)."""
        return pd.factorize(as_text_values(frame[self.group_column]))[0].astype(np.int64)

    @staticmethod
    def multi_hot(target: TargetEncoding, values: pd.Series, split: str = "this split") -> np.ndarray:
        """float32 ``[rows, labels]``: 1 where the row's cell names the label.

        Raises:
            UserError: a label that the training split never saw.
        """
        sets = split_labels(values, target.separator)
        index = {label: i for i, label in enumerate(target.classes)}
        y = np.zeros((len(sets), len(index)), dtype=np.float32)
        for row, labels in enumerate(sets):
            for label in labels:
                if label not in index:
                    raise UserError(
                        f"target {target.name} has label {label!r} in {split} (row {row + 1} of it) but not in the "
                        "training split; add training rows with that label, or remove it from those rows."
                    )
                y[row, index[label]] = 1.0
        return y

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict, where: str = "the checkpoint") -> "Preprocessor":
        """The preprocessing ``to_state`` wrote, read from an untrusted file: every field checked by type,
        shape and bound before any of it is used (``check_state``).

        Raises:
            UserError: a field of the wrong type, shape or size, naming ``where`` and the field.
        """
        try:
            check_state(state)
        except ValueError as bad:
            raise UserError(f"{where}: {bad}; use a checkpoint written by seo-train.") from None
        state = dict(state)
        state["targets"] = [TargetEncoding(**t) for t in state["targets"]]
        return cls(**state)


# Bounds on stored preprocessing: far above what seo-train fits, far below what would exhaust memory.
MAX_LENGTH = 8192  # tokens per row: ids take rows x max_length x 8 bytes, attention max_length^2 per row
MAX_COLUMNS = 100_000  # input columns of each kind
MAX_CATEGORIES = 1_000_000  # known categories of one categorical column
MAX_VOCAB = 1_000_000  # tokens of the tokenizer's vocabulary
MAX_CLASSES = 10_000  # classes of one target: seo-eval's confusion matrix has MAX_CLASSES^2 cells
MAX_TARGETS = 1_000
MAX_TEXT = 1_000  # characters of a column, class or category name
MAX_SEPARATOR = 16  # characters of a multilabel target's separator


def _fit_numeric(
    frame: pd.DataFrame, numeric_columns: list[str], numeric_scaling: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """The numeric columns' (mean, scale, Yeo-Johnson lambdas, fill values) from the training rows.

    Raises:
        UserError: a numeric column without any value in the training split.
    """
    mean, scale, power, fill = [], [], [], []
    if numeric_columns:
        x = frame[numeric_columns].to_numpy(dtype=np.float64)
        fill = np.nanmedian(x, axis=0).tolist() if len(x) else []
        empty = [c for c, v in zip(numeric_columns, fill, strict=True) if np.isnan(v)]
        if empty:
            raise UserError(
                f"numeric column {empty[0]!r} has no values in the training split, so there is nothing to "
                "learn from or impute with; fill it in or remove it from data.numeric_columns."
            )
        x = np.where(np.isnan(x), np.asarray(fill), x)
        if numeric_scaling == "power":
            transformer = PowerTransformer(method="yeo-johnson", standardize=False).fit(x)
            power = transformer.lambdas_.tolist()
            x = transformer.transform(x)
        scaler = StandardScaler().fit(x)
        mean, scale = scaler.mean_.tolist(), scaler.scale_.tolist()
    return mean, scale, power, fill


def _fit_text(
    frame: pd.DataFrame, text_columns: list[str], vocab_size: int, max_length: int | None, encoder: dict | None
) -> tuple[str, int | None]:
    """The fitted tokenizer's JSON ("" for a pretrained encoder's own, or without text) and the tokens kept
    per row (from the data when ``max_length`` is None, at most the encoder's limit)."""
    tokenizer_json = ""
    if text_columns:
        # The vocabulary's statistics settle long before a million texts; a seeded sample keeps
        # tokenizer training to seconds on large tables.
        sample = (
            frame if len(frame) <= TOKENIZER_SAMPLE else frame.sample(TOKENIZER_SAMPLE, random_state=0)
        )
        separator = encoder["sep"] if encoder else SEP
        if encoder:
            tokenizer = Tokenizer.from_str(encoder["tokenizer_json"])
        else:
            tokenizer = _train_tokenizer(_joined_text(sample, text_columns), vocab_size)
            tokenizer_json = tokenizer.to_str()
        if max_length is None:
            max_length = length_from_data(tokenizer, _joined_text(sample, text_columns, separator))
        if encoder:
            if max_length > encoder["model_max_length"]:
                log.info("data.max_length %d is above the encoder's limit: %d tokens.", max_length, encoder["model_max_length"])
            max_length = min(max_length, encoder["model_max_length"])
    return tokenizer_json, max_length


def _encode_targets(frame: pd.DataFrame, targets: list[Target], label_separator: str) -> list["TargetEncoding"]:
    """Each target's encoding: class names, multilabel labels, or a regression target's mean and std.

    Raises:
        UserError: a multilabel target without any label in the training split.
    """
    encodings = []
    for target in targets:
        values = frame[target.name]
        if target.type == CLASSIFICATION:
            encodings.append(TargetEncoding(target.name, target.type, classes=_class_names(values)))
        elif target.type == MULTILABEL:
            labels = sorted(set().union(*split_labels(values, label_separator)))
            if not labels:
                raise UserError(
                    f"multilabel target {target.name!r} has no labels in the training split; check the column "
                    f"and data.label_separator={label_separator!r}."
                )
            encodings.append(TargetEncoding(target.name, target.type, classes=labels, separator=label_separator))
        elif target.type in (RATE, RANKING):
            encodings.append(TargetEncoding(target.name, target.type))  # a probability, a relevance: no scaling
        else:
            y = values.to_numpy(dtype=np.float64)
            std = float(y.std())
            encodings.append(
                TargetEncoding(target.name, target.type, mean=float(y.mean()), std=std or 1.0)
            )
    return encodings

def check_state(state: Any) -> None:
    """Check stored preprocessing field by field, before any of it is used.

    Raises:
        ValueError: 'preprocessing.<field> must be <what>' for the first field that is not what ``fit`` writes.
    """
    need, names, numbers = _need, _names, _numbers
    fields = {f.name for f in dataclasses.fields(Preprocessor)}
    need(isinstance(state, dict), "", "a mapping of the fitted preprocessing")
    unknown = sorted(str(key)[:60] for key in set(state) - fields)
    need(
        not unknown,
        "",
        f"a mapping of {', '.join(sorted(fields))} only (it has {unknown[0]!r})" if unknown else "",
    )
    absent = sorted(fields - set(state) - {"numeric_fill", "encoder", "weight_column", "trials_column", "group_column"})  # not in older checkpoints
    need(not absent, f".{absent[0]}" if absent else "", "present")
    for key in ("text_columns", "numeric_columns", "categorical_columns"):
        need(names(state[key], MAX_COLUMNS), f".{key}", f"a list of at most {MAX_COLUMNS:,} column names")
    columns = len(state["numeric_columns"])
    need(
        numbers(state["numeric_mean"], columns),
        ".numeric_mean",
        f"{columns} finite numbers, one per numeric column",
    )
    need(
        numbers(state["numeric_scale"], columns, positive=True),
        ".numeric_scale",
        f"{columns} finite numbers above 0, one per numeric column",
    )
    for key in ("numeric_power", "numeric_fill"):
        value = state.get(key, [])
        need(
            value == [] or numbers(value, columns),
            f".{key}",
            f"empty or {columns} finite numbers, one per numeric column",
        )
    categories, categorical = state["categories"], state["categorical_columns"]
    need(
        isinstance(categories, dict) and set(categories) == set(categorical),
        ".categories",
        "a mapping of exactly the categorical columns to their categories",
    )
    for column in categorical:
        need(
            names(categories[column], MAX_CATEGORIES),
            f".categories.{column[:60]!r}",
            f"a list of at most {MAX_CATEGORIES:,} category names",
        )
    max_length = state["max_length"]
    need(
        type(max_length) is int and 1 <= max_length <= MAX_LENGTH,
        ".max_length",
        f"a whole number from 1 to {MAX_LENGTH}",
    )
    encoder = state.get("encoder", {})  # not in older checkpoints
    if encoder != {}:
        from seo_cli.pretrained import encoder_problem

        problem = encoder_problem(encoder)
        need(problem is None and bool(state["text_columns"]), ".encoder", f"a pretrained encoder seo-train stores ({problem or 'with text columns'})")
    tokenizer = state["tokenizer_json"]
    need(
        type(tokenizer) is str and bool(tokenizer) == (bool(state["text_columns"]) and encoder == {}),
        ".tokenizer_json",
        "a tokenizer exactly when there are text columns and no pretrained encoder",
    )
    problem = _tokenizer_problem(tokenizer) if tokenizer else None
    need(problem is None, ".tokenizer_json", f"the kind of tokenizer seo-train fits ({problem})")
    _check_targets(state["targets"])
    ranked = any(isinstance(t, dict) and t.get("type") == RANKING for t in state["targets"])
    group = state.get("group_column", "")
    need(
        type(group) is str and len(group) <= MAX_TEXT and bool(group) == ranked,
        ".group_column",
        f"a column name of at most {MAX_TEXT} characters exactly when there is a ranking target",
    )
    for key in ("weight_column", "trials_column"):
        value = state.get(key, "")
        need(type(value) is str and len(value) <= MAX_TEXT, f".{key}", "a column name, or empty")
    rates = any(t["type"] == RATE for t in state["targets"])
    need(bool(state.get("trials_column", "")) == rates, ".trials_column", "a column name exactly when a target is a rate")


def _need(ok: bool, field: str, must: str) -> None:
    if not ok:
        raise ValueError(f"preprocessing{field} must be {must}")


def _names(value: Any, limit: int) -> bool:
    return isinstance(value, list) and len(value) <= limit and all(type(v) is str and len(v) <= MAX_TEXT for v in value)


def _numbers(value: Any, length: int, positive: bool = False) -> bool:
    ok = isinstance(value, list) and len(value) == length
    return ok and all(type(v) in (int, float) and math.isfinite(v) and (v > 0 or not positive) for v in value)


def _check_targets(targets: Any) -> None:
    """The stored target encodings: names once each, a known type, classes or a mean and a positive std."""
    need, names, numbers = _need, _names, _numbers
    need(
        isinstance(targets, list) and 0 < len(targets) <= MAX_TARGETS,
        ".targets",
        f"a list of 1 to {MAX_TARGETS:,} targets",
    )
    seen: set[str] = set()
    for i, target in enumerate(targets):
        where = f".targets[{i}]"
        keys = set(target) if isinstance(target, dict) else set()
        need(
            isinstance(target, dict)
            and {"name", "type"} <= keys <= {"name", "type", "classes", "mean", "std", "separator"},
            where,
            "a mapping of name, type, classes, mean, std and separator",
        )
        name = target["name"]
        need(
            type(name) is str and 0 < len(name) <= MAX_TEXT and name not in seen,
            f"{where}.name",
            "a target name, each once",
        )
        seen.add(name)
        need(
            target["type"] in (CLASSIFICATION, REGRESSION, RATE, MULTILABEL, RANKING),
            f"{where}.type",
            f"{CLASSIFICATION}, {REGRESSION}, {RATE}, {MULTILABEL} or {RANKING}",
        )
        separator = target.get("separator", "")
        need(
            type(separator) is str and len(separator) <= MAX_SEPARATOR and bool(separator) == (target["type"] == MULTILABEL),
            f"{where}.separator",
            f"the text of 1 to {MAX_SEPARATOR} characters that joins a multilabel target's labels (empty for other targets)",
        )
        if target["type"] == MULTILABEL:
            labels = target.get("classes")
            need(
                names(labels, MAX_CLASSES)
                and 0 < len(labels) == len(set(labels))
                and all(label and label == label.strip() and separator not in label for label in labels),
                f"{where}.classes",
                f"a list of 1 to {MAX_CLASSES:,} distinct, non-empty labels without the separator {separator!r}",
            )
        elif target["type"] == CLASSIFICATION:
            classes = target.get("classes")
            need(
                names(classes, MAX_CLASSES) and 0 < len(classes) == len(set(classes)),
                f"{where}.classes",
                f"a list of 1 to {MAX_CLASSES:,} distinct class names",
            )
        elif target["type"] == RATE:  # a probability, never rescaled
            need(target.get("mean", 0.0) == 0.0 and target.get("std", 1.0) == 1.0, where, "a rate with mean 0 and std 1")
        else:
            need(numbers([target.get("mean", 0.0)], 1), f"{where}.mean", "a finite number")
            need(
                numbers([target.get("std", 1.0)], 1, positive=True), f"{where}.std", "a finite number above 0"
            )


def _tokenizer_problem(text: str) -> str | None:
    """What makes ``text`` other than a tokenizer like ``_train_tokenizer``'s, or None: it must load, and its
    pipeline (normalizer, pre-tokenizer, decoder, no post-processor) must be exactly the one seo-train fits,
    so no stored regular expression (a Replace or Split step) can take exponential time on new rows; its
    token ids must fit its vocabulary, or the model's embedding would be indexed out of range."""
    try:
        tokenizer = Tokenizer.from_str(text)  # serde_json: nesting capped at 128 levels
        spec = json.loads(text)
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
        return f"it does not load: {str(err).strip().splitlines()[0][:80] if str(err).strip() else type(err).__name__}"
    reference = json.loads(_untrained_tokenizer().to_str())
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation", "padding"):
        if spec.get(part) != reference[part]:
            return f"its {part} differs"
    model = spec.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("dropout") is not None:
        return "its model is not a BPE model without dropout"
    size = tokenizer.get_vocab_size()
    if size > MAX_VOCAB:
        return f"its vocabulary has more than {MAX_VOCAB:,} tokens"
    ids = [*tokenizer.get_vocab().values()]
    if len(set(ids)) != len(ids) or any(not 0 <= i < size for i in ids):
        return "its token ids are not 0 to the vocabulary size"
    specials = [tokenizer.token_to_id(token) for token in (PAD, UNK, SEP)]
    if specials != [0, 1, 2]:
        return f"its first tokens are not {PAD}, {UNK}, {SEP}"
    return None


LENGTH_SAMPLE = 20_000  # training texts whose token counts set max_length when it is not given
LENGTH_QUANTILE = 0.99


def length_from_data(tokenizer: Tokenizer, texts: list[str]) -> int:
    """``max_length`` when ``data.max_length`` is null: the 99th percentile of the token counts of (a
    seeded sample of) the training texts, rounded up to a multiple of 8, from 8 to ``MAX_LENGTH``. Logged."""
    if len(texts) > LENGTH_SAMPLE:
        picked = np.random.default_rng(0).choice(len(texts), LENGTH_SAMPLE, replace=False)
        texts = [texts[i] for i in picked]
    counts = np.array([len(e.ids) for e in tokenizer.encode_batch(texts)]) if texts else np.zeros(1)
    quantile = float(np.quantile(counts, LENGTH_QUANTILE))
    length = int(min(MAX_LENGTH, max(8, -(-math.ceil(quantile) // 8) * 8)))
    log.info(
        "data.max_length=null: %d tokens, the 99th percentile of %d training rows' token counts (%d) rounded "
        "up to a multiple of 8 (the longest has %d); longer rows are cut there.",
        length,
        len(counts),
        math.ceil(quantile),
        int(counts.max()),
    )
    return length


def as_text_values(values: pd.Series) -> pd.Series:
    """Values as the strings that name classes and categories, the same in every file: a column pandas
    read as float because a cell was empty keeps its whole numbers as integers ("1", not "1.0"), and a
    missing value is "" (its own category)."""
    if pd.api.types.is_float_dtype(values):
        present = values.dropna()
        if (present == np.floor(present)).all():
            return values.astype("Int64").astype(object).where(values.notna(), "").astype(str)
    return values.astype(object).where(values.notna(), "").astype(str)


def split_labels(values: pd.Series, separator: str) -> list[set[str]]:
    """The label set of each cell of a multilabel column: its text cut at ``separator``, each label stripped
    of surrounding spaces, empty ones dropped ("news| local|" -> {"news", "local"})."""
    return [{label.strip() for label in cell.split(separator)} - {""} for cell in as_text_values(values)]


def _joined_text(frame: pd.DataFrame, columns: list[str], separator: str = SEP) -> list[str]:
    # Column-wise string concatenation: a row-wise join is ~10x slower on a million rows.
    parts = [frame[c].fillna("").astype(str) for c in columns]
    return parts[0].str.cat(parts[1:], sep=f" {separator} ").tolist() if len(parts) > 1 else parts[0].tolist()


def _class_names(values: pd.Series) -> list[str]:
    names = as_text_values(values).unique().tolist()
    # Integer-looking labels sort numerically (2 before 10), the rest alphabetically.
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


def _untrained_tokenizer() -> Tokenizer:
    """The tokenizer pipeline seo-train fits (and the only one a checkpoint may hold)."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.BPEDecoder()
    return tokenizer


def _train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = _untrained_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, UNK, SEP], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.get_vocab_size() <= 3:  # only [PAD], [UNK], [SEP]
        raise UserError("the text columns of the training split hold no words; check data.text_columns.")
    return tokenizer
