"""Preprocessing fitted on the training split only, and stored in checkpoints as plain data.

Numeric columns are standardised (optionally after a Yeo-Johnson power transform that makes skewed
counts such as backlinks or word counts close to normal), categorical columns are coded with 0 as the "unknown" slot, the
text columns are joined with ``[SEP]`` and tokenized by a byte-pair-encoding tokenizer (Hugging Face
``tokenizers``) trained on the training texts, classification targets are label-encoded with their
class names kept, and regression targets are standardised (predictions are mapped back to the
original units before any metric is computed).
"""

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import PowerTransformer, StandardScaler
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch import Tensor

from seo_cli.data.spec import CLASSIFICATION, InputSpec, Target
from seo_cli.errors import UserError

PAD, UNK, SEP = "[PAD]", "[UNK]", "[SEP]"
TOKENIZER_SAMPLE = 200_000  # training texts the tokenizer learns its vocabulary from, at most
ENCODE_CHUNK = 20_000  # rows tokenized at a time


@dataclass
class TargetEncoding:
    name: str
    type: str
    classes: list[str] = field(default_factory=list)  # classification: class names in code order
    mean: float = 0.0  # regression: training mean and standard deviation
    std: float = 1.0


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

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        *,
        text_columns: list[str],
        numeric_columns: list[str],
        categorical_columns: list[str],
        targets: list[Target],
        max_length: int,
        vocab_size: int,
        numeric_scaling: str = "standard",
    ) -> "Preprocessor":
        """Fit on the training rows only, so no statistic of validation or test rows leaks into training.

        Args:
            numeric_scaling: standard (z-score) | power (Yeo-Johnson, then z-score).
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
        categories = {
            col: sorted(as_text_values(frame[col]).unique().tolist()) for col in categorical_columns
        }
        tokenizer_json = ""
        if text_columns:
            # The vocabulary's statistics settle long before a million texts; a seeded sample keeps
            # tokenizer training to seconds on large tables.
            sample = (
                frame if len(frame) <= TOKENIZER_SAMPLE else frame.sample(TOKENIZER_SAMPLE, random_state=0)
            )
            tokenizer_json = _train_tokenizer(_joined_text(sample, text_columns), vocab_size).to_str()
        encodings = []
        for target in targets:
            values = frame[target.name]
            if target.type == CLASSIFICATION:
                encodings.append(TargetEncoding(target.name, target.type, classes=_class_names(values)))
            else:
                y = values.to_numpy(dtype=np.float64)
                std = float(y.std())
                encodings.append(
                    TargetEncoding(target.name, target.type, mean=float(y.mean()), std=std or 1.0)
                )
        return cls(
            text_columns=list(text_columns),
            numeric_columns=list(numeric_columns),
            categorical_columns=list(categorical_columns),
            numeric_mean=mean,
            numeric_scale=scale,
            numeric_power=power,
            categories=categories,
            tokenizer_json=tokenizer_json,
            max_length=max_length,
            targets=encodings,
            numeric_fill=fill,
        )

    @property
    def input_spec(self) -> InputSpec:
        vocab = Tokenizer.from_str(self.tokenizer_json).get_vocab_size() if self.tokenizer_json else 0
        return InputSpec(
            num_numeric=len(self.numeric_columns),
            categorical_cardinalities=[len(self.categories[c]) + 1 for c in self.categorical_columns],
            vocab_size=vocab,
            max_length=self.max_length if self.tokenizer_json else 0,
            pad_id=0,
        )

    @property
    def heads(self) -> dict[str, int]:
        """Output size of each target's head: the number of classes, or 1 for regression."""
        return {t.name: (len(t.classes) if t.type == CLASSIFICATION else 1) for t in self.targets}

    @property
    def target_scale(self) -> dict[str, tuple[float, float]]:
        return {t.name: (t.mean, t.std) for t in self.targets if t.type != CLASSIFICATION}

    @property
    def class_names(self) -> dict[str, list[str]]:
        return {t.name: t.classes for t in self.targets if t.type == CLASSIFICATION}

    def transform_inputs(self, frame: pd.DataFrame) -> dict[str, Tensor]:
        inputs: dict[str, Tensor] = {}
        if self.numeric_columns:
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
            inputs["numeric"] = torch.from_numpy(x.astype(np.float32))
        if self.categorical_columns:
            codes = [
                # Unseen categories map to 0, the unknown slot; known ones to 1..n.
                pd.Index(self.categories[col]).get_indexer(as_text_values(frame[col])).astype(np.int64) + 1
                for col in self.categorical_columns
            ]
            inputs["categorical"] = torch.from_numpy(np.stack(codes, axis=1))
        if self.tokenizer_json:
            tokenizer = Tokenizer.from_str(self.tokenizer_json)
            tokenizer.enable_truncation(self.max_length)
            tokenizer.enable_padding(pad_id=0, pad_token=PAD, length=self.max_length)
            # In chunks: an Encoding object holds tokens, offsets and masks besides the ids, several KB
            # per row, so a million of them at once would need gigabytes.
            encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: no offsets
            ids = np.empty((len(frame), self.max_length), dtype=np.int64)
            for start in range(0, len(frame), ENCODE_CHUNK):
                chunk = frame.iloc[start : start + ENCODE_CHUNK]
                ids[start : start + len(chunk)] = [
                    e.ids for e in encode(_joined_text(chunk, self.text_columns))
                ]
            inputs["tokens"] = torch.from_numpy(ids)
        return inputs

    def transform_targets(self, frame: pd.DataFrame, split: str = "this split") -> dict[str, Tensor]:
        """Encode the target columns.

        Raises:
            UserError: a classification value that the training split never saw.
        """
        out: dict[str, Tensor] = {}
        for t in self.targets:
            values = frame[t.name]
            if t.type == CLASSIFICATION:
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
            else:
                y = (values.to_numpy(dtype=np.float64) - t.mean) / t.std
                out[t.name] = torch.from_numpy(y.astype(np.float32))
        return out

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "Preprocessor":
        state = dict(state)
        state["targets"] = [TargetEncoding(**t) for t in state["targets"]]
        return cls(**state)


def as_text_values(values: pd.Series) -> pd.Series:
    """Values as the strings that name classes and categories, the same in every file: a column pandas
    read as float because a cell was empty keeps its whole numbers as integers ("1", not "1.0"), and a
    missing value is "" (its own category)."""
    if pd.api.types.is_float_dtype(values):
        present = values.dropna()
        if (present == np.floor(present)).all():
            return values.astype("Int64").astype(object).where(values.notna(), "").astype(str)
    return values.astype(object).where(values.notna(), "").astype(str)


def _joined_text(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    # Column-wise string concatenation: a row-wise join is ~10x slower on a million rows.
    parts = [frame[c].fillna("").astype(str) for c in columns]
    return parts[0].str.cat(parts[1:], sep=f" {SEP} ").tolist() if len(parts) > 1 else parts[0].tolist()


def _class_names(values: pd.Series) -> list[str]:
    names = as_text_values(values).unique().tolist()
    # Integer-looking labels sort numerically (2 before 10), the rest alphabetically.
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


def _train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, UNK, SEP], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.get_vocab_size() <= 3:  # only [PAD], [UNK], [SEP]
        raise UserError("the text columns of the training split hold no words; check data.text_columns.")
    return tokenizer
