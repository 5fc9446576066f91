"""What a test passes ``seo_cli.trainer.fit`` to validate on a fixed set of batches."""

from collections.abc import Callable

from seo_cli.data.spec import Target
from seo_cli.evaluation import Scorer


def validate_on(batches, targets: list[Target], loss_fn, precision: str = "32") -> Callable:
    """``fit``'s ``validate``: the ``val/...`` metrics of the model on ``batches``."""
    scorer = Scorer(targets, precision=precision)
    return lambda model: scorer.evaluate(model, batches, "val", loss_fn).metrics
