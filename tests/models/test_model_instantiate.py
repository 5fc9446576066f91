"""The models build the way the entrypoints build them: Hydra's instantiate with runtime arguments."""

import pytest
import torch
from hydra.utils import instantiate
from model_inputs import HEADS, SPEC
from omegaconf import OmegaConf


@pytest.mark.parametrize(
    "node",
    [
        {"_target_": "seo_cli.models.mlp.MLP", "hidden_sizes": [32, 16], "activation": "gelu"},
        {"_target_": "seo_cli.models.textcnn.TextCNN", "kernel_sizes": [2, 3]},
        {"_target_": "seo_cli.models.transformer.Transformer", "d_model": 16, "num_heads": 2},
        {"_target_": "seo_cli.models.seo_multitask.SEOMultitask", "fusion_hidden": [32, 16]},
    ],
    ids=["mlp", "textcnn", "transformer", "seo_multitask"],
)
def test_instantiate_with_runtime_inputs_and_heads(node):
    # _convert_="object": Hydra turns the InputSpec dataclass into a config node on the way in;
    # "object" hands the constructor an InputSpec again (with "all" it would be a plain dict).
    model = instantiate(OmegaConf.create(node), inputs=SPEC, heads=HEADS, _convert_="object")
    batch = {
        "numeric": torch.randn(3, 3),
        "categorical": torch.tensor([[0, 1], [3, 0], [2, 1]]),
        "tokens": torch.tensor([[5, 6, 7, 0], [1, 0, 0, 0], [9, 8, 7, 6]]),
    }
    out = model(batch)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"intent": (3, 4), "quality": (3, 2), "ctr": (3,)}
