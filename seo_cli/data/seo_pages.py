"""The built-in dataset ``seo_pages``: synthetic web pages from a documented generating process.

Pages are drawn independently; everything below is the whole process, with the constant's
module-level name in brackets. Because every target is a known function of observed columns plus
independent noise, the best score any model can reach is known (:func:`bayes_optimal_scores`) and
tests can assert that training gets close to it. Text is lower case, words separated by spaces.

Latent draws (only the intent label is stored)

1. topic ~ Uniform over 12 topics [TOPICS], independent of everything else. Its phrase appears in
   title and description, its four words in the body.
2. intent y ~ Categorical(pi = [0.35, 0.15, 0.25, 0.25]) [INTENT_PRIORS] over informational,
   navigational, commercial, transactional [INTENT_CLASSES].

Observed columns

3. Cue phrases: each intent owns 8 phrases [INTENT_CUES]. The title carries one cue and the meta
   description one cue, drawn independently: with probability 1 - eps from the true intent's list,
   else from a uniformly random list (the true one included), eps = 0.4 [CUE_NOISE]. So
   P(list j | y = k) = 0.6 1{j = k} + 0.1: 0.7 for the true list, 0.1 for each other one. The
   phrase is uniform within its list. No cue token occurs in another list or anywhere else in the
   text, so the list is read back from the text without error (:func:`parse_cue_lists`).
4. word_count (words of the whole page; ``body`` holds a 20-40 word excerpt) = round(exp(Z)),
   Z ~ Normal(mu_y, 0.5) [WORD_COUNT_LOG_SD], mu = log([1200, 300, 700, 450])
   [WORD_COUNT_LOG_MEANS]: informational pages long, navigational short.
5. title = ``"{cue} {power }{topic} {tail} | {brand}"`` or ``"{power }{topic} {cue} {tail} |
   {brand}"`` (each template with probability 1/2). The power word [POWER_WORDS, none a cue] is
   present with probability 0.3 [POWER_WORD_RATE]; the tail is 1-4 distinct words (count uniform)
   from [TITLE_TAIL_WORDS]; the brand is uniform [BRANDS]: 5-10 words and the "|", about 25-95
   characters. title_length = len(title).
   meta_description = ``"{cue} {topic} {3-5 phrases}."``, distinct phrases [DESCRIPTION_PHRASES].
   body = 20-40 words (count uniform), each a topic word (uniform of 4) with probability 0.35
   [BODY_TOPIC_RATE], else uniform from [BODY_WORDS]. All of step 5 except the cues is independent
   of the intent.
6. Signals independent of intent and topic:
   backlinks = floor(exp(N(3.0, 1.5^2))), an int >= 0;
   domain_authority = clip(round(8 + 9 log(1 + backlinks) + N(0, 7^2)), 1, 100);
   cms ~ Categorical([0.45, 0.2, 0.15, 0.2]) over wordpress, shopify, wix, custom [CMS_PRIORS];
   page_speed (load time in s) = round(exp(N(log 2 + shift[cms], 0.4^2)), 2),
   shift = [0, -0.1, 0.25, -0.15] [CMS_SPEED_SHIFT];
   mobile_friendly ~ Bernoulli(0.8); https ~ Bernoulli(0.85);
   keyword_density (percent) = round(100 Beta(2.5, 90), 2);
   internal_links ~ Poisson(exp(N(2.3, 0.6^2))).
   cms only moves page_speed: no target reads cms, the topic or the latent intent.

Targets, with stuffing = clip(keyword_density - 4, 0, 4) (the penalty saturates at 8 %)

7. intent: the label y. P(k | observed) ∝ pi_k P(title list | k) P(description list | k)
   P(word_count | k), with P(w | k) = Phi((log(w + 1/2) - mu_k) / 0.5) - Phi((log(w - 1/2) - mu_k) / 0.5);
   everything else observed is independent of y given these three. Bayes accuracy = the sum over
   (title list, description list, w = 0, 1, ...) of max_k pi_k P(lists, w | k): an exact finite
   sum (:func:`bayes_predict_intent` is the matching classifier).
8. quality = "high" with probability p = sigmoid(q), else "low" [QUALITY_INTERCEPT, QUALITY_COEF]:
   q = -3.0 + 0.15 (domain_authority - 35) - 4.5 log(page_speed / 2) + 2.0 mobile_friendly
       + 2.0 https - 2.5 stuffing.
   Bayes accuracy = E[max(p, 1 - p)].
9. position (Search-Console-style average position, >= 1) = 1 + exp(g + 0.3 N(0, 1))
   [POSITION_LOG_SD], with [POSITION_INTERCEPT, POSITION_COEF]
   g = 2.6 - 0.03 (domain_authority - 35) - 0.15 (log(1 + backlinks) - 3) + 0.5 log(page_speed / 2)
       - 0.25 mobile_friendly - 0.2 https + 0.2 stuffing - 0.2 log(word_count / 600)
       - 0.1 log(1 + internal_links).
   Regression function m = E[position | x] = 1 + exp(g + s^2 / 2), conditional variance
   v = exp(2 g + s^2) (exp(s^2) - 1), s = 0.3. Median position is about 9; 99 % lie below about 50.
10. ctr = sigmoid(h + 0.25 N(0, 1)) [CTR_LOGIT_SD], noise independent of the position noise,
    h = -0.7 - 1.1 log(1 + exp(g)) + 0.5 power_word - 0.6 ((title_length - 55) / 20)^2
    [CTR_INTERCEPT, CTR_POSITION_COEF, CTR_POWER_WORD_COEF, CTR_TITLE_LENGTH_COEF,
    CTR_BEST_TITLE_LENGTH], where 1 + exp(g) is the median position and power_word = 1 when the
    title holds a power word. E[ctr | x] and Var[ctr | x] are logit-normal moments, computed by
    32-node Gauss-Hermite quadrature (exact to float precision).

Ranking within a query (drawn after everything above, so the other columns do not depend on it)

11. query_id = "query-NNNNN", uniform over max(1, round(n / 20)) queries [PAGES_PER_QUERY]: about 20
    pages per query, Poisson-like sizes.
12. relevance (graded, 0-3) = the number of cuts [RELEVANCE_CUTS = -1, 1.5, 4] below q + 2 N(0, 1)
    [RELEVANCE_NOISE_SD], q the quality logit of step 8 (a good page answers the query better),
    noise independent of the quality draw. E[relevance | x] = sum_c Phi((q - c) / 2) grows with q, so
    the Bayes-optimal ranking of a query orders its pages by q (it maximises the expected DCG of every
    cut-off); :func:`expected_relevance` gives it. About 41 % of pages are 0, 25 % 1, 20 % 2, 14 % 3.
    Opt-in target (not in the default targets): ``data.targets=[...,{name:relevance,type:ranking}]``
    with ``data.group_column=query_id``.

Best R^2 of a regression target = Var(m(X)) / (Var(m(X)) + E[v(X)]) = 1 - E[Var(y | X)] / Var(y)
(the noise is not additive, so v depends on x). :func:`bayes_optimal_scores` evaluates it, and
E[max(p, 1 - p)] for quality, on a large fixed-seed sample of pages with the exact m, v and p.
With the defaults: intent accuracy 0.8227 (exact; majority class 0.35), quality accuracy 0.8505,
ctr R^2 0.8662, position R^2 0.7969 (Monte Carlo standard error about 0.0003 each). The best
NDCG@10 of relevance is that of ordering each query by E[relevance | x] on the realised relevance,
averaged over the queries (of about 20 pages) of the same sample: 0.9153. A split
that holds only part of each query (a random row split) has an easier best: compute it on those rows
with ``seo_cli.metrics.ranking_report(relevance, expected_relevance(rows), query ids)``.
"""

import re

import numpy as np
import pandas as pd
from scipy.special import expit, ndtr

from seo_cli.data.spec import CLASSIFICATION, REGRESSION, Target
from seo_cli.errors import UserError

TEXT_COLUMNS = ["title", "meta_description", "body"]
NUMERIC_COLUMNS = [
    "word_count",
    "title_length",
    "backlinks",
    "domain_authority",
    "page_speed",
    "mobile_friendly",
    "https",
    "keyword_density",
    "internal_links",
]
CATEGORICAL_COLUMNS = ["cms"]
TARGETS = [
    Target("intent", CLASSIFICATION),
    Target("quality", CLASSIFICATION),
    Target("ctr", REGRESSION),
    Target("position", REGRESSION),
]

INTENT_CLASSES = ["informational", "navigational", "commercial", "transactional"]
QUALITY_CLASSES = ["low", "high"]
INTENT_PRIORS = np.array([0.35, 0.15, 0.25, 0.25])
INTENT_CUES = {
    "informational": ["how to", "what is", "guide", "tips", "tutorial", "explained", "ideas", "why"],
    "navigational": [
        "login", "official site", "sign in", "my account", "homepage", "contact", "support center",
        "store locator",
    ],
    "commercial": ["best", "review", "top 10", "vs", "compare", "alternatives", "ranked", "rated"],
    "transactional": [
        "buy", "price", "discount", "coupon", "order online", "free shipping", "deals", "cheap",
    ],
}  # fmt: skip
CUE_NOISE = 0.4
WORD_COUNT_LOG_MEANS = np.log([1200.0, 300.0, 700.0, 450.0])
WORD_COUNT_LOG_SD = 0.5

TOPICS = {
    "running shoes": ["cushioning", "marathon", "trail", "sneakers"],
    "coffee makers": ["espresso", "brew", "grinder", "beans"],
    "python tutorials": ["programming", "code", "functions", "debugging"],
    "home insurance": ["policy", "coverage", "claims", "premium"],
    "electric cars": ["battery", "charging", "range", "ev"],
    "vegan recipes": ["plant", "tofu", "lentils", "dinner"],
    "wireless headphones": ["bluetooth", "noise", "earbuds", "audio"],
    "yoga mats": ["stretching", "poses", "grip", "studio"],
    "credit cards": ["rewards", "cashback", "interest", "balance"],
    "hiking boots": ["trails", "waterproof", "ankle", "outdoor"],
    "standing desks": ["ergonomic", "office", "posture", "height"],
    "travel backpacks": ["luggage", "carry", "flights", "packing"],
}
POWER_WORDS = ["ultimate", "proven", "easy", "complete", "essential", "simple", "definitive", "powerful"]
POWER_WORD_RATE = 0.3
TITLE_TAIL_WORDS = [
    "2025", "edition", "update", "uk", "usa", "today", "now", "season", "week", "spring",
    "collection", "series", "lineup", "checklist", "roundup", "insights",
]  # fmt: skip
BRANDS = ["webnest", "pagecraft", "shopwise", "dailyhub", "brightpost", "nordicly", "urbanlab", "peakpoint"]
DESCRIPTION_PHRASES = [
    "everything you need", "updated this month", "from our editors", "with real examples",
    "trusted by readers", "quick answers", "clear details", "no jargon", "written by specialists",
    "with photos", "fresh this season", "see the details", "read more", "many options covered",
    "plain language", "checked by experts",
]  # fmt: skip
BODY_WORDS = [
    "the", "a", "of", "this", "that", "we", "you", "your", "with", "on", "it", "also", "many",
    "people", "when", "choosing", "look", "at", "features", "options", "time", "year", "use",
    "daily", "new", "most", "first", "more", "than", "here", "each", "one", "will", "can", "get",
    "make", "sure", "our", "team", "tested",
]  # fmt: skip
BODY_TOPIC_RATE = 0.35

CMS_NAMES = ["wordpress", "shopify", "wix", "custom"]
CMS_PRIORS = np.array([0.45, 0.2, 0.15, 0.2])
CMS_SPEED_SHIFT = np.array([0.0, -0.1, 0.25, -0.15])  # added to the log load time

QUALITY_INTERCEPT = -3.0
QUALITY_COEF = {
    "domain_authority": 0.15,  # per point above 35
    "log_speed": -4.5,  # per log(page_speed / 2 s)
    "mobile_friendly": 2.0,
    "https": 2.0,
    "stuffing": -2.5,  # per percent of keyword density above 4, up to 4
}

POSITION_INTERCEPT = 2.6
POSITION_COEF = {
    "domain_authority": -0.03,  # per point above 35
    "log_backlinks": -0.15,  # per unit of log(1 + backlinks) above 3
    "log_speed": 0.5,  # per log(page_speed / 2 s)
    "mobile_friendly": -0.25,
    "https": -0.2,
    "stuffing": 0.2,  # per percent of keyword density above 4, up to 4
    "log_word_count": -0.2,  # per unit of log(word_count / 600)
    "log_internal_links": -0.1,  # per unit of log(1 + internal_links)
}
POSITION_LOG_SD = 0.3

CTR_INTERCEPT = -0.7
CTR_POSITION_COEF = -1.1  # per unit of log(median position)
CTR_POWER_WORD_COEF = 0.5
CTR_TITLE_LENGTH_COEF = -0.6  # per squared 20 characters away from the best length
CTR_BEST_TITLE_LENGTH = 55.0
CTR_LOGIT_SD = 0.25

PAGES_PER_QUERY = 20
RELEVANCE_CUTS = np.array([-1.0, 1.5, 4.0])  # on the quality logit's scale
RELEVANCE_NOISE_SD = 2.0

_TOKEN = re.compile(r"[a-z0-9]+")
_CUE_LIST_OF_TOKEN = {
    token: list_index
    for list_index, name in enumerate(INTENT_CLASSES)
    for phrase in INTENT_CUES[name]
    for token in phrase.split()
}
_POWER_WORD_SET = frozenset(POWER_WORDS)
# Gauss-Hermite (probabilists') nodes and weights for E[f(Z)], Z ~ N(0, 1).
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(32)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def generate_seo_pages(num_rows: int, seed: int) -> pd.DataFrame:
    """Draw ``num_rows`` pages from the process in the module docstring.

    Returns:
        A frame with ``page_id``, the text, numeric and categorical columns, the four targets
        (``intent`` and ``quality`` as class-name strings, ``ctr`` and ``position`` as floats), and
        ``query_id`` with the int64 graded ``relevance`` 0-3 of the page to its query.
        The same seed gives the same frame.
    """
    if num_rows < 1:
        raise UserError(f"seo_pages needs at least 1 row, got num_rows={num_rows}; raise data.num_rows.")
    rng = np.random.default_rng(seed)
    pages = _draw_pages(rng, num_rows)

    descriptions = _compose_descriptions(rng, pages["topic"], pages["desc_cue_list"])
    bodies = _compose_bodies(rng, pages["topic"])
    position, ctr = _draw_position_and_ctr(rng, pages)
    quality_high = rng.random(num_rows) < expit(_quality_logit(pages))
    query, relevance = _draw_queries_and_relevance(rng, pages)

    return pd.DataFrame(
        {
            "page_id": [f"page-{i:06d}" for i in range(num_rows)],
            "title": pages["title"],
            "meta_description": descriptions,
            "body": bodies,
            **{column: pages[column] for column in NUMERIC_COLUMNS},
            "cms": np.array(CMS_NAMES, dtype=object)[pages["cms"]],
            "intent": np.array(INTENT_CLASSES, dtype=object)[pages["intent"]],
            "quality": np.array(QUALITY_CLASSES, dtype=object)[quality_high.astype(np.int64)],
            "ctr": ctr,
            "position": position,
            "query_id": np.array([f"query-{q:05d}" for q in query], dtype=object),
            "relevance": relevance,
        }
    )


def bayes_optimal_scores(num_samples: int = 200_000, seed: int = 12345) -> dict[str, float]:
    """The best score any model can reach on each target of this process.

    Intent accuracy is an exact finite sum; the others average exact conditional quantities
    (P(high | x), E[y | x], Var[y | x]) over ``num_samples`` pages drawn with ``seed``.

    Returns:
        ``{"intent/accuracy", "quality/accuracy", "ctr/r2", "position/r2", "relevance/ndcg@10"}`` to
        float. The NDCG@10 is the Bayes ranking's (by E[relevance | x]) on the relevance drawn for the
        sample's queries of about PAGES_PER_QUERY pages (standard error about 0.001).
    """
    from seo_cli.metrics import ranking_report  # imports torch: only this function needs it

    rng = np.random.default_rng(seed)
    pages = _draw_pages(rng, num_samples)
    p_high = expit(_quality_logit(pages))
    query, relevance = _draw_queries_and_relevance(rng, pages)
    ndcg = ranking_report(relevance, expected_relevance(pages), query, [10])["ndcg@10"]
    return {
        "intent/accuracy": _intent_bayes_accuracy(),
        "quality/accuracy": float(np.mean(np.maximum(p_high, 1.0 - p_high))),
        "ctr/r2": _best_r2(*_ctr_moments(pages)),
        "position/r2": _best_r2(*_position_moments(pages)),
        "relevance/ndcg@10": ndcg,
    }


def parse_cue_lists(texts) -> np.ndarray:
    """Index (into ``INTENT_CLASSES``) of the cue list of each text's first cue token; -1 where none."""
    return np.array(
        [
            next((_CUE_LIST_OF_TOKEN[t] for t in _TOKEN.findall(text) if t in _CUE_LIST_OF_TOKEN), -1)
            for text in texts
        ],
        dtype=np.int64,
    )


def has_power_word(titles) -> np.ndarray:
    """1 where the title holds a word of ``POWER_WORDS``, else 0."""
    return np.array([int(not _POWER_WORD_SET.isdisjoint(_TOKEN.findall(t))) for t in titles], dtype=np.int64)


def intent_posterior(frame: pd.DataFrame) -> np.ndarray:
    """P(intent = k | observed columns), shape [rows, 4], from title, description and word_count.

    A text without a cue (never the case in generated pages) contributes no evidence.
    """
    title_list = parse_cue_lists(frame["title"])
    desc_list = parse_cue_lists(frame["meta_description"])
    cue_likelihood = np.vstack([_cue_likelihood(), np.ones(len(INTENT_CLASSES))])  # row -1: no cue
    joint = (
        INTENT_PRIORS
        * cue_likelihood[title_list]
        * cue_likelihood[desc_list]
        * _word_count_likelihood(frame["word_count"].to_numpy())
    )
    return joint / joint.sum(axis=1, keepdims=True)


def bayes_predict_intent(frame: pd.DataFrame) -> np.ndarray:
    """The Bayes-optimal intent class index per row (into ``INTENT_CLASSES``), from observed columns."""
    return intent_posterior(frame).argmax(axis=1)


def quality_probability(frame) -> np.ndarray:
    """P(quality = "high" | observed columns)."""
    return expit(_quality_logit(frame))


def expected_position(frame) -> np.ndarray:
    """E[position | observed columns]: the regression function of ``position``."""
    return _position_moments(frame)[0]


def expected_ctr(frame) -> np.ndarray:
    """E[ctr | observed columns]: the regression function of ``ctr`` (reads the title for the power word)."""
    return _ctr_moments(_with_power_word(frame))[0]


def expected_relevance(frame) -> np.ndarray:
    """E[relevance | observed columns] = sum over the cuts c of Phi((q - c) / sd): the Bayes ranking score."""
    q = _quality_logit(frame)
    return ndtr((q[:, None] - RELEVANCE_CUTS[None, :]) / RELEVANCE_NOISE_SD).sum(axis=1)


def _draw_queries_and_relevance(rng: np.random.Generator, pages) -> tuple[np.ndarray, np.ndarray]:
    """Step 11 and 12: each page's query index and its graded relevance 0-3."""
    n = len(pages["word_count"])
    query = rng.integers(max(1, round(n / PAGES_PER_QUERY)), size=n)
    latent = _quality_logit(pages) + RELEVANCE_NOISE_SD * rng.normal(size=n)
    return query, np.searchsorted(RELEVANCE_CUTS, latent).astype(np.int64)


def _draw_pages(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Latent draws, cue choices, titles and numeric signals: everything the targets read."""
    topic = rng.integers(len(TOPICS), size=n)
    intent = rng.choice(len(INTENT_CLASSES), size=n, p=INTENT_PRIORS)
    title_cue_list = _draw_cue_list(rng, intent)
    desc_cue_list = _draw_cue_list(rng, intent)
    word_count = np.rint(np.exp(rng.normal(WORD_COUNT_LOG_MEANS[intent], WORD_COUNT_LOG_SD))).astype(np.int64)
    power_word = (rng.random(n) < POWER_WORD_RATE).astype(np.int64)
    titles = _compose_titles(rng, topic, title_cue_list, power_word)

    backlinks = np.floor(np.exp(rng.normal(3.0, 1.5, size=n))).astype(np.int64)
    authority = np.rint(8.0 + 9.0 * np.log1p(backlinks) + rng.normal(0.0, 7.0, size=n))
    domain_authority = np.clip(authority, 1, 100)
    cms = rng.choice(len(CMS_NAMES), size=n, p=CMS_PRIORS)
    page_speed = np.round(np.exp(rng.normal(np.log(2.0) + CMS_SPEED_SHIFT[cms], 0.4)), 2)
    mobile_friendly = (rng.random(n) < 0.8).astype(np.int64)
    https = (rng.random(n) < 0.85).astype(np.int64)
    keyword_density = np.round(100.0 * rng.beta(2.5, 90.0, size=n), 2)
    internal_links = rng.poisson(np.exp(rng.normal(2.3, 0.6, size=n))).astype(np.int64)

    return {
        "topic": topic,
        "intent": intent,
        "title_cue_list": title_cue_list,
        "desc_cue_list": desc_cue_list,
        "title": titles,
        "power_word": power_word,
        "word_count": word_count,
        "title_length": np.array([len(title) for title in titles], dtype=np.int64),
        "backlinks": backlinks,
        "domain_authority": domain_authority.astype(np.int64),
        "page_speed": page_speed,
        "mobile_friendly": mobile_friendly,
        "https": https,
        "keyword_density": keyword_density,
        "internal_links": internal_links,
        "cms": cms,
    }


def _compose_titles(
    rng: np.random.Generator, topic: np.ndarray, cue_list: np.ndarray, power_word: np.ndarray
) -> list[str]:
    n = len(topic)
    # Python lists: indexing them in the loop is several times faster than indexing arrays.
    cue = rng.integers(8, size=n).tolist()
    power = rng.integers(len(POWER_WORDS), size=n).tolist()
    cue_first = (rng.random(n) < 0.5).tolist()
    num_tail = rng.integers(1, 5, size=n).tolist()
    tail_words = _distinct_indices(rng, n, len(TITLE_TAIL_WORDS), 4)
    brand = rng.integers(len(BRANDS), size=n).tolist()
    topic, cue_list, power_word = topic.tolist(), cue_list.tolist(), power_word.tolist()
    topic_names = list(TOPICS)
    cue_phrases = [INTENT_CUES[name] for name in INTENT_CLASSES]
    titles = []
    for i in range(n):
        name = topic_names[topic[i]]
        head = f"{POWER_WORDS[power[i]]} {name}" if power_word[i] else name
        cue_phrase = cue_phrases[cue_list[i]][cue[i]]
        tail = " ".join(TITLE_TAIL_WORDS[w] for w in tail_words[i][: num_tail[i]])
        words = f"{cue_phrase} {head} {tail}" if cue_first[i] else f"{head} {cue_phrase} {tail}"
        titles.append(f"{words} | {BRANDS[brand[i]]}")
    return titles


def _compose_descriptions(rng: np.random.Generator, topic: np.ndarray, cue_list: np.ndarray) -> list[str]:
    n = len(topic)
    cue = rng.integers(8, size=n).tolist()
    num_phrases = rng.integers(3, 6, size=n).tolist()
    phrases = _distinct_indices(rng, n, len(DESCRIPTION_PHRASES), 5)
    topic_names = list(TOPICS)
    cue_phrases = [INTENT_CUES[name] for name in INTENT_CLASSES]
    topic, cue_list = topic.tolist(), cue_list.tolist()
    return [
        f"{cue_phrases[cue_list[i]][cue[i]]} {topic_names[topic[i]]} "
        + " ".join(DESCRIPTION_PHRASES[p] for p in phrases[i][: num_phrases[i]])
        + "."
        for i in range(n)
    ]


def _compose_bodies(rng: np.random.Generator, topic: np.ndarray) -> list[str]:
    n = len(topic)
    length = rng.integers(20, 41, size=n).tolist()
    from_topic = (rng.random((n, 40)) < BODY_TOPIC_RATE).tolist()
    topic_word = rng.integers(4, size=(n, 40)).tolist()
    filler_word = rng.integers(len(BODY_WORDS), size=(n, 40)).tolist()
    topic_words = list(TOPICS.values())
    topic = topic.tolist()
    return [
        " ".join(
            topic_words[topic[i]][topic_word[i][w]] if from_topic[i][w] else BODY_WORDS[filler_word[i][w]]
            for w in range(length[i])
        )
        for i in range(n)
    ]


def _distinct_indices(rng: np.random.Generator, n: int, population: int, k: int) -> list[list[int]]:
    """Per row, k distinct indices below ``population`` in random order (sampling without replacement)."""
    return np.argsort(rng.random((n, population)), axis=1)[:, :k].tolist()


def _draw_cue_list(rng: np.random.Generator, intent: np.ndarray) -> np.ndarray:
    noisy = rng.random(intent.shape[0]) < CUE_NOISE
    return np.where(noisy, rng.integers(len(INTENT_CLASSES), size=intent.shape[0]), intent)


def _draw_position_and_ctr(rng: np.random.Generator, pages) -> tuple[np.ndarray, np.ndarray]:
    n = len(pages["word_count"])
    position = 1.0 + np.exp(_position_log_mean(pages) + POSITION_LOG_SD * rng.normal(size=n))
    ctr = expit(_ctr_logit_mean(pages) + CTR_LOGIT_SD * rng.normal(size=n))
    return position, ctr


def _column(columns, name: str) -> np.ndarray:
    return np.asarray(columns[name], dtype=np.float64)


def _keyword_stuffing(columns) -> np.ndarray:
    """Percent of keyword density above 4, saturating at 4 (8 % density and above are equally bad)."""
    return np.clip(_column(columns, "keyword_density") - 4.0, 0.0, 4.0)


def _quality_logit(columns) -> np.ndarray:
    c = QUALITY_COEF
    return (
        QUALITY_INTERCEPT
        + c["domain_authority"] * (_column(columns, "domain_authority") - 35.0)
        + c["log_speed"] * np.log(_column(columns, "page_speed") / 2.0)
        + c["mobile_friendly"] * _column(columns, "mobile_friendly")
        + c["https"] * _column(columns, "https")
        + c["stuffing"] * _keyword_stuffing(columns)
    )


def _position_log_mean(columns) -> np.ndarray:
    """g(x): the mean of log(position - 1) given the observed columns."""
    c = POSITION_COEF
    return (
        POSITION_INTERCEPT
        + c["domain_authority"] * (_column(columns, "domain_authority") - 35.0)
        + c["log_backlinks"] * (np.log1p(_column(columns, "backlinks")) - 3.0)
        + c["log_speed"] * np.log(_column(columns, "page_speed") / 2.0)
        + c["mobile_friendly"] * _column(columns, "mobile_friendly")
        + c["https"] * _column(columns, "https")
        + c["stuffing"] * _keyword_stuffing(columns)
        + c["log_word_count"] * np.log(_column(columns, "word_count") / 600.0)
        + c["log_internal_links"] * np.log1p(_column(columns, "internal_links"))
    )


def _ctr_logit_mean(columns) -> np.ndarray:
    """h(x): the mean of logit(ctr) given the observed columns (``power_word`` as a 0/1 column)."""
    median_position = 1.0 + np.exp(_position_log_mean(columns))
    return (
        CTR_INTERCEPT
        + CTR_POSITION_COEF * np.log(median_position)
        + CTR_POWER_WORD_COEF * _column(columns, "power_word")
        + CTR_TITLE_LENGTH_COEF * ((_column(columns, "title_length") - CTR_BEST_TITLE_LENGTH) / 20.0) ** 2
    )


def _position_moments(columns) -> tuple[np.ndarray, np.ndarray]:
    g = _position_log_mean(columns)
    s2 = POSITION_LOG_SD**2
    mean = 1.0 + np.exp(g + s2 / 2.0)
    variance = np.exp(2.0 * g + s2) * np.expm1(s2)
    return mean, variance


def _ctr_moments(columns) -> tuple[np.ndarray, np.ndarray]:
    values = expit(_ctr_logit_mean(columns)[:, None] + CTR_LOGIT_SD * _GH_NODES[None, :])
    mean = values @ _GH_WEIGHTS
    variance = (values**2) @ _GH_WEIGHTS - mean**2
    return mean, variance


def _best_r2(mean: np.ndarray, variance: np.ndarray) -> float:
    explained = float(np.var(mean))
    return explained / (explained + float(np.mean(variance)))


def _with_power_word(frame) -> dict[str, np.ndarray]:
    columns = {name: np.asarray(frame[name]) for name in NUMERIC_COLUMNS}
    columns["power_word"] = has_power_word(frame["title"])
    return columns


def _cue_likelihood() -> np.ndarray:
    """[observed list j, intent k] -> P(list j | k)."""
    k = len(INTENT_CLASSES)
    return (1.0 - CUE_NOISE) * np.eye(k) + CUE_NOISE / k


def _word_count_likelihood(word_count: np.ndarray) -> np.ndarray:
    """[rows, intent k] -> P(word_count = w | k) for the rounded log-normal of step 4."""
    w = np.asarray(word_count, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore"):
        lower = (np.log(np.maximum(w - 0.5, 0.0)) - WORD_COUNT_LOG_MEANS) / WORD_COUNT_LOG_SD
    upper = (np.log(w + 0.5) - WORD_COUNT_LOG_MEANS) / WORD_COUNT_LOG_SD
    return ndtr(upper) - ndtr(lower)


def _intent_bayes_accuracy() -> float:
    """sum over (title list, description list, w) of max_k P(k, lists, w): exact up to a tail of ~1e-15."""
    top = np.exp(WORD_COUNT_LOG_MEANS.max() + 8.5 * WORD_COUNT_LOG_SD)
    p_w = _word_count_likelihood(np.arange(int(top) + 1))  # [w, k]
    cue = _cue_likelihood()
    pair = cue[:, None, :] * cue[None, :, :]  # [title list, description list, k]
    joint = INTENT_PRIORS * pair[:, :, None, :] * p_w[None, None, :, :]
    return float(joint.max(axis=-1).sum())
