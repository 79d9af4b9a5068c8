"""Acquisition functions: which unlabeled images to annotate next.

Each acquisition is a pure function of what a model says about the pool, registered
in :data:`ACQUISITIONS` under the name ``--strategy`` accepts::

    pool = Pool(probs=probs, embeddings=features, labeled_embeddings=labeled_features)
    chosen = acquire("badge", pool, k=20, rng=np.random.default_rng(0))
    chosen.indices, chosen.scores          # (k,) distinct pool indices, best first

``probs`` are class probabilities (N, C); ``embeddings`` the model's pooled features
(N, F) of the pool and ``labeled_embeddings`` (M, F) those of the labeled images.
Scores are "higher = more worth labelling" for every strategy. Randomness (random
choice, tie-breaks, k-means++ draws) comes only from the ``rng`` passed in.

- ``random``: uniform choice, the baseline every strategy must beat.
- ``entropy``: the highest predictive entropy ``H(p) = -sum_c p_c log p_c``
  (Shannon; Settles, "Active learning literature survey", 2009).
- ``margin``: the smallest gap between the two most probable classes (Scheffer et al.
  2001); score ``1 - (p_(1) - p_(2))``.
- ``coreset``: k-center greedy on the embeddings (Sener & Savarese, "Active learning
  for convolutional neural networks: a core-set approach", ICLR 2018): repeatedly the
  pool point farthest from everything labeled or already chosen; score its distance.
- ``badge``: k-means++ seeding on gradient embeddings (Ash et al., "Deep batch
  active learning by diverse, uncertain gradient lower bounds", ICLR 2020): the
  gradient of the loss at the predicted label with respect to the last layer,
  ``g = (p - onehot(argmax p)) outer h``, is large for uncertain points and points in
  different directions for different kinds of image, so seeding picks a batch that
  is both uncertain and diverse; score the squared distance at the draw.
- ``entropy_kmeans``: diverse mini-batch active learning (Zhdanov, "Diverse
  mini-batch active learning", arXiv:1901.05954, 2019): the ``BETA * k`` crops of
  highest entropy are clustered by entropy-weighted k-means into ``k`` clusters and
  the crop nearest each center is taken. Top-k entropy spends a batch on look-alike
  crops near the boundary; clustering among the uncertain ones keeps the focus on
  uncertainty (and, with rare positives, on the fractures the model half-sees) while
  spreading the batch over different kinds of image. Score: the entropy. On the
  phantom it leads random choice most in the early rounds (120-200 labels); its later
  rounds, trained on many hard crops, retrain less steadily.
- ``class_balanced``: uncertainty sampling with per-class quotas toward a balanced
  labeled set (Bengar et al. 2022); score: the entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.registry import Registry


@dataclass(frozen=True, kw_only=True)
class Pool:
    """What the model says about the unlabeled pool (and the labeled set)."""

    probs: np.ndarray  # (N, C) class probabilities
    embeddings: np.ndarray | None = None  # (N, F) pooled features of the pool
    labeled_embeddings: np.ndarray | None = None  # (M, F) pooled features of labeled images
    labeled_classes: np.ndarray | None = None  # (M,) class indices of the labeled images

    def __len__(self) -> int:
        return int(np.asarray(self.probs).shape[0])


@dataclass(frozen=True)
class Selection:
    """Chosen pool indices (k,), best first, and their scores (k,)."""

    indices: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Acquisition:
    """A registered acquisition function and what it needs."""

    name: str
    fn: Callable[[Pool, int, np.random.Generator], Selection]
    needs_embeddings: bool


#: name -> :class:`Acquisition`; the names ``--strategy`` and the simulation accept.
ACQUISITIONS: Registry[Acquisition] = Registry("acquisition strategy")


def register_acquisition(
    name: str, *, needs_embeddings: bool = False
) -> Callable[[Callable[[Pool, int, np.random.Generator], Selection]], Callable]:
    """Decorator: ``@register_acquisition("entropy")`` on ``fn(pool, k, rng) -> Selection``."""

    def decorator(fn: Callable[[Pool, int, np.random.Generator], Selection]) -> Callable:
        ACQUISITIONS.register(name, doc=fn.__doc__ or "")(Acquisition(name, fn, needs_embeddings))
        return fn

    return decorator


def list_strategies() -> list[str]:
    return ACQUISITIONS.names()


def acquire(name: str, pool: Pool, k: int, rng: np.random.Generator) -> Selection:
    """The ``k`` pool items strategy ``name`` would have labelled next (fewer if the pool
    is smaller). Raises ``UnknownNameError`` for an unknown name and ``ValueError``
    when the strategy needs embeddings the pool lacks."""
    acq = ACQUISITIONS.get(name)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if acq.needs_embeddings and pool.embeddings is None:
        raise ValueError(f"strategy {name!r} needs the pool's embeddings (Pool.embeddings)")
    k = min(int(k), len(pool))
    if k == 0:
        return Selection(np.zeros(0, np.int64), np.zeros(0, np.float64))
    out = acq.fn(pool, k, rng)
    return Selection(np.asarray(out.indices, np.int64), np.asarray(out.scores, np.float64))


# ----------------------------------------------------------------------------- the math


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """``H(p) = -sum_c p_c log p_c`` per row (N,), in nats."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def best_vs_second(probs: np.ndarray) -> np.ndarray:
    """``p_(1) - p_(2)``: the gap between the two most probable classes (N,)."""
    p = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return p[:, -1] - p[:, -2]


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> Selection:
    """The ``k`` highest scores; ties broken at random (from ``rng``)."""
    scores = np.asarray(scores, dtype=np.float64)
    tie = rng.random(len(scores))
    order = np.lexsort((tie, -scores))[:k]  # by score descending, then the random key
    return Selection(order, scores[order])


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(a), len(b))."""
    d = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _min_sq_dist(points: np.ndarray, centers: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Squared distance from each point to its nearest center (N,); inf without centers."""
    if len(centers) == 0:
        return np.full(len(points), np.inf)
    out = np.full(len(points), np.inf)
    for s in range(0, len(centers), chunk):
        out = np.minimum(out, _sq_dist(points, centers[s : s + chunk]).min(axis=1))
    return out


def k_center_greedy(
    embeddings: np.ndarray,
    labeled: np.ndarray | None,
    k: int,
    rng: np.random.Generator,
) -> Selection:
    """Greedy k-center (Sener & Savarese 2018): indices (k,) and their distances to the
    nearest labeled-or-chosen point at the time each was chosen. Without labeled points
    the first center is drawn at random."""
    x = np.asarray(embeddings, dtype=np.float64)  # (N, F)
    centers = np.zeros((0, x.shape[1])) if labeled is None else np.asarray(labeled, np.float64)
    d = _min_sq_dist(x, centers)  # (N,)
    chosen: list[int] = []
    scores: list[float] = []
    for _ in range(k):
        if np.isinf(d).all():
            i = int(rng.integers(len(x)))
        else:
            best = np.flatnonzero(d == d.max())
            i = int(best[rng.integers(len(best))])
        chosen.append(i)
        scores.append(float(np.sqrt(d[i])) if np.isfinite(d[i]) else float("inf"))
        d = np.minimum(d, _sq_dist(x, x[i : i + 1])[:, 0])
        d[chosen] = -1.0  # never again
    return Selection(np.asarray(chosen), np.asarray(scores))


def gradient_embeddings(probs: np.ndarray, features: np.ndarray) -> np.ndarray:
    """BADGE's embeddings (N, C * F): ``(p - onehot(argmax p))`` outer ``h``, the gradient
    of the cross-entropy at the predicted label with respect to the last linear layer."""
    p = np.asarray(probs, dtype=np.float64)  # (N, C)
    h = np.asarray(features, dtype=np.float64)  # (N, F)
    g = p.copy()
    g[np.arange(len(p)), p.argmax(1)] -= 1.0
    return (g[:, :, None] * h[:, None, :]).reshape(len(p), -1)  # (N, C*F)


def kmeans_pp_seeding(points: np.ndarray, k: int, rng: np.random.Generator) -> Selection:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) as BADGE uses it: the first seed
    is the point of largest norm, each next one is drawn with probability proportional
    to its squared distance from the nearest seed. Returns indices (k,) and the squared
    distance of each at its draw (the first: its squared norm)."""
    x = np.asarray(points, dtype=np.float64)  # (N, D)
    norms = (x * x).sum(1)
    first = int(np.argmax(norms))
    chosen, scores = [first], [float(norms[first])]
    d = _sq_dist(x, x[first : first + 1])[:, 0]
    d[first] = 0.0
    while len(chosen) < k:
        total = d.sum()
        if total <= 0.0:  # every remaining point coincides with a seed: take any at random
            rest = np.setdiff1d(np.arange(len(x)), chosen)
            i = int(rng.choice(rest))
        else:
            i = int(rng.choice(len(x), p=d / total))
        chosen.append(i)
        scores.append(float(d[i]))
        d = np.minimum(d, _sq_dist(x, x[i : i + 1])[:, 0])
        d[chosen] = 0.0
    return Selection(np.asarray(chosen), np.asarray(scores))


# ----------------------------------------------------------------------------- registry


@register_acquisition("random")
def random_acquisition(pool: Pool, k: int, rng: np.random.Generator) -> Selection:
    """Uniform random choice (the baseline)."""
    return top_k(rng.random(len(pool)), k, rng)


@register_acquisition("entropy")
def entropy_acquisition(pool: Pool, k: int, rng: np.random.Generator) -> Selection:
    """Highest predictive entropy: the images the model is least sure about."""
    return top_k(predictive_entropy(pool.probs), k, rng)


@register_acquisition("margin")
def margin_acquisition(pool: Pool, k: int, rng: np.random.Generator) -> Selection:
    """Smallest margin between the two most probable classes."""
    return top_k(1.0 - best_vs_second(pool.probs), k, rng)


@register_acquisition("coreset", needs_embeddings=True)
def coreset_acquisition(pool: Pool, k: int, rng: np.random.Generator) -> Selection:
    """Core-set: k-center greedy on the model's embeddings (diverse, covers the pool)."""
    return k_center_greedy(pool.embeddings, pool.labeled_embeddings, k, rng)


@register_acquisition("badge", needs_embeddings=True)
def badge_acquisition(pool: Pool, k: int, rng: np.random.Generator) -> Selection:
    """BADGE: k-means++ on gradient embeddings (uncertain and diverse)."""
    return kmeans_pp_seeding(gradient_embeddings(pool.probs, pool.embeddings), k, rng)


def weighted_kmeans(
    points: np.ndarray,
    weights: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    iterations: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with weighted points, seeded by weighted k-means++.

    Returns the centers (k, D) and each point's cluster (N,). A point of weight ``w``
    pulls its center as ``w`` copies of it would (Zhdanov 2019, eq. 2)."""
    x = np.asarray(points, dtype=np.float64)  # (N, D)
    w = np.clip(np.asarray(weights, dtype=np.float64), 1e-12, None)  # (N,)
    first = int(rng.choice(len(x), p=w / w.sum()))
    centers = [x[first]]
    d = _sq_dist(x, x[first : first + 1])[:, 0]  # (N,)
    while len(centers) < k:
        mass = w * d
        if mass.sum() > 0:
            i = int(rng.choice(len(x), p=mass / mass.sum()))
        else:
            i = int(rng.integers(len(x)))
        centers.append(x[i])
        d = np.minimum(d, _sq_dist(x, x[i : i + 1])[:, 0])
    c = np.stack(centers)  # (k, D)
    assign = np.zeros(len(x), np.int64)
    for it in range(iterations):
        new = _sq_dist(x, c).argmin(axis=1)  # (N,)
        if it and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            member = assign == j
            if member.any():
                c[j] = (w[member, None] * x[member]).sum(0) / w[member].sum()
    return c, assign


#: candidates per pick of ``entropy_kmeans``: the ``BETA * k`` most uncertain crops are
#: clustered. The paper's 10 suits pools far larger than the batch; on a pool of ~30
#: batches (the phantom's ~1300 crops) 10 * k is a third of it and the prefilter would
#: barely filter, so 3 (the most uncertain ~10%).
BETA = 3


def diverse_uncertain(
    uncertainty: np.ndarray,
    embeddings: np.ndarray,
    k: int,
    rng: np.random.Generator,
    *,
    beta: int = 5,
) -> Selection:
    """Diverse mini-batch active learning (``entropy_kmeans`` in the module docstring)
    on any ``uncertainty``: indices (k,) most uncertain first, and their uncertainties."""
    u = np.asarray(uncertainty, dtype=np.float64)  # (N,)
    x = np.asarray(embeddings, dtype=np.float64)  # (N, F)
    m = min(len(u), max(k, int(beta) * k))
    candidates = top_k(u, m, rng).indices  # (m,) most uncertain first
    if m == k:
        return Selection(candidates, u[candidates])
    centers, assign = weighted_kmeans(x[candidates], u[candidates], k, rng)
    picked: list[int] = []
    for j in range(k):
        members = np.flatnonzero(assign == j)
        if len(members):
            d = _sq_dist(x[candidates[members]], centers[j : j + 1])[:, 0]
            picked.append(int(candidates[members[d.argmin()]]))
    if len(picked) < k:  # empty clusters: the most uncertain candidates not yet taken
        taken = set(picked)
        picked += [int(i) for i in candidates if int(i) not in taken][: k - len(picked)]
    chosen = np.asarray(picked)
    order = np.lexsort((rng.random(len(chosen)), -u[chosen]))
    return Selection(chosen[order], u[chosen[order]])


@register_acquisition("entropy_kmeans", needs_embeddings=True)
def entropy_kmeans_acquisition(pool: Pool, k: int, rng: np.random.Generator) -> Selection:
    """Diverse mini-batch: entropy-weighted k-means among the most uncertain (Zhdanov 2019)."""
    return diverse_uncertain(predictive_entropy(pool.probs), pool.embeddings, k, rng, beta=BETA)


def class_quotas(labeled_counts: np.ndarray, k: int) -> np.ndarray:
    """How many of ``k`` new labels each class gets (C,), summing to ``k``: water-filling
    toward equal counts, so the emptiest class is filled first (ties to the lower
    class index). ``labeled_counts`` (C,) are the labeled set's class counts."""
    counts = np.asarray(labeled_counts, dtype=np.int64).copy()  # (C,)
    quota = np.zeros(len(counts), np.int64)
    for _ in range(int(k)):
        c = int(np.argmin(counts))
        counts[c] += 1
        quota[c] += 1
    return quota


def class_balanced_uncertain(
    probs: np.ndarray, labeled_classes: np.ndarray | None, k: int, rng: np.random.Generator
) -> Selection:
    """Class-balanced uncertainty sampling: indices (k,) most uncertain first and their
    entropies. Class ``c`` gets ``class_quotas(counts, k)[c]`` picks: the crops of
    highest entropy among those whose most probable class is ``c``, then those of
    highest ``p_c`` (ties at random). Without labeled classes the quotas are equal."""
    p = np.asarray(probs, dtype=np.float64)  # (N, C)
    n, num = p.shape
    counts = (
        np.bincount(np.asarray(labeled_classes, np.int64), minlength=num)[:num]
        if labeled_classes is not None and len(labeled_classes)
        else np.zeros(num, np.int64)
    )
    quota = class_quotas(counts, k)
    h = predictive_entropy(p)  # (N,)
    predicted = p.argmax(1)  # (N,)
    tie = rng.random(n)
    taken = np.zeros(n, bool)
    picked: list[int] = []
    # the scarcest class first: its own crops are the fewest, so it chooses first
    for c in np.argsort(counts, kind="stable"):
        want = int(quota[c])
        if want == 0:
            continue
        # own class by entropy descending, then the rest by p_c descending
        order = np.lexsort((tie, -np.where(predicted == c, h, p[:, c]), predicted != c))
        got = [int(i) for i in order if not taken[i]][:want]
        taken[got] = True
        picked += got
    chosen = np.asarray(picked, np.int64)
    order = np.lexsort((tie[chosen], -h[chosen]))
    return Selection(chosen[order], h[chosen[order]])


@register_acquisition("class_balanced")
def class_balanced_acquisition(pool: Pool, k: int, rng: np.random.Generator) -> Selection:
    """Class-balanced uncertainty: per-class quotas toward equal counts (Bengar 2022)."""
    return class_balanced_uncertain(pool.probs, pool.labeled_classes, k, rng)
