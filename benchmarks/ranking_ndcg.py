"""NDCG@10 of the built-in ranking target (``relevance`` within ``query_id``) reached by the default model
(``seo_multitask``), against the best any model can reach on the same rows.

    python benchmarks/ranking_ndcg.py                      # 2 CPU cores: about 2 minutes
    python benchmarks/ranking_ndcg.py --set epochs=5 --set loss.ranking=listnet

seo-train runs as the command line would compose it, with the default targets plus
``{name: relevance, type: ranking}`` and ``data.group_column=query_id``. The best NDCG@10 is the Bayes
ranking's (each query ordered by E[relevance | x], ``seo_pages.expected_relevance``) on the very test rows
the run is scored on: a random row split leaves about 3 of a query's 20 pages in the test split, so the
best there is higher than ``bayes_optimal_scores()["relevance/ndcg@10"]`` (whole queries, 0.9153). So the
best checkpoint also scores 1,000 fresh whole queries of the generator (20,000 pages, seed 999), against
the Bayes ranking of the same pages.
Writes ``benchmarks/results/ranking_ndcg_cpu.json``.
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from seo_cli.config import register_configs
from seo_cli.data import seo_pages
from seo_cli.data.pipeline import load_splits
from seo_cli.metrics import ranking_report

RESULTS = Path(__file__).resolve().parent / "results" / "ranking_ndcg_cpu.json"
TARGETS = (
    "data.targets=[{name:intent,type:classification},{name:quality,type:classification},"
    "{name:ctr,type:regression},{name:position,type:regression},{name:relevance,type:ranking}]"
)
WHOLE_QUERY_PAGES, WHOLE_QUERY_SEED = 20_000, 999  # pages no run trains on (its seed draws other pages)
CONF = Path(__file__).resolve().parents[1] / "conf"


def best_on_test(overrides: list[str]) -> float:
    """The Bayes ranking's NDCG@10 on the test split seo-train scores (the same rows, the same relevance)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[o for o in overrides if not o.startswith("hydra.")])
    test = load_splits(OmegaConf.to_object(cfg.data), cfg.seed)["test"][0]
    return ranking_report(test["relevance"], seo_pages.expected_relevance(test), test["query_id"], [10])["ndcg@10"]


def whole_queries(checkpoint: Path) -> dict[str, float]:
    """The checkpoint's NDCG@10 on 1,000 fresh whole queries (20,000 new pages), and the Bayes ranking's there."""
    from seo_cli.predict import TorchModel

    pages = seo_pages.generate_seo_pages(WHOLE_QUERY_PAGES, seed=WHOLE_QUERY_SEED)
    scores = TorchModel(checkpoint, "cpu", "error", []).outputs(pages, 1024)["relevance"]
    report = ranking_report(pages["relevance"], scores, pages["query_id"], [10])
    best = ranking_report(pages["relevance"], seo_pages.expected_relevance(pages), pages["query_id"], [10])
    return {"whole_queries/ndcg@10": report["ndcg@10"], "whole_queries/best_on_the_same_rows": best["ndcg@10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="an extra seo-train override")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [
            TARGETS, "data.group_column=query_id", f"seed={args.seed}", "device=cpu", "trainer.progress=plain",
            "trainer.monitor=val/relevance/ndcg@10", "trainer.mode=max", f"hydra.run.dir={run_dir}", *args.set,
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(["seo-train", *overrides], check=True, capture_output=True)
        wall = time.perf_counter() - started
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        whole = whole_queries(Path(run_dir) / "checkpoints" / "best.pt")
    result = {
        "overrides": overrides[:3] + args.set,
        "test/relevance/ndcg@10": summary["metrics"]["test/relevance/ndcg@10"],
        "best_on_the_same_test_rows": best_on_test(overrides),
        "best_whole_queries": seo_pages.bayes_optimal_scores()["relevance/ndcg@10"],
        **whole,
        "test/relevance/mrr": summary["metrics"]["test/relevance/mrr"],
        "test/relevance/map": summary["metrics"]["test/relevance/map"],
        "epochs": summary["epochs_trained"],
        "wall_time_s": round(wall, 1),
    }
    result["gap"] = result["best_on_the_same_test_rows"] - result["test/relevance/ndcg@10"]
    result["whole_queries/gap"] = result["whole_queries/best_on_the_same_rows"] - result["whole_queries/ndcg@10"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
