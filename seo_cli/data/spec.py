"""Plain descriptions of what a dataset feeds a model: its targets and its input tensors."""

from dataclasses import dataclass, field

CLASSIFICATION = "classification"
REGRESSION = "regression"
RANKING = "ranking"  # graded relevance (integer >= 0) per row, ordered within the rows of one data.group_column value
MULTILABEL = "multilabel"  # a set of labels per row, written "a|b" (data.label_separator); one sigmoid per label
MULTILABEL_THRESHOLD = 0.5  # a multilabel target's label is predicted when its probability is at least this
RATE = "rate"  # successes out of trials (clicks out of impressions): a probability, trained with a binomial likelihood

# Keys of a batch's label dict that are not targets: the row weights (data.weight_column) and the trials
# of rate targets (data.trials_column). No target may take these names (seo_cli.validation refuses them).
WEIGHT_KEY = "__weight__"
TRIALS_KEY = "__trials__"


@dataclass(frozen=True)
class Target:
    """One prediction target: a column name and its task type (classification | regression | rate | multilabel
    | ranking)."""

    name: str
    type: str


@dataclass(frozen=True)
class InputSpec:
    """Shapes of the input tensors a model receives in its batch dict.

    A batch is ``{"numeric": float32 [B, num_numeric], "categorical": int64 [B, len(cardinalities)],
    "tokens": int64 [B, max_length]}``; a key is absent when the dataset has no such columns.
    Token id ``pad_id`` marks padding. Categorical code 0 is the "unknown" slot of every column, and
    each cardinality counts it (known categories + 1).
    """

    num_numeric: int = 0
    categorical_cardinalities: list[int] = field(default_factory=list)
    vocab_size: int = 0
    max_length: int = 0
    pad_id: int = 0
    encoder_config: dict | None = field(default=None, compare=False)  # a pretrained encoder's (plain data)

    @property
    def has_text(self) -> bool:
        return self.vocab_size > 0

    @property
    def has_tabular(self) -> bool:
        return self.num_numeric > 0 or len(self.categorical_cardinalities) > 0
