"""Exact per (latent, factor) recovery statistics in memory bounded by latents x factors.

The metrics are those of a per (latent, factor) activation histogram (docs/benchmark.md: bin 0 holds
``a <= 0``, bins 1..B split ``(0, max a]`` evenly), but no such histogram is kept for every pair, which
would take ``latents x factors x (B + 1) x 8`` bytes (251 GB at 65,536 latents x 1,000 labels).
Instead :class:`FactorRecovery` streams the rows several times:

1. **counts**: each latent's largest activation and firing count, each factor's positives and the
   co-firing count ``c[f, s]`` (rows of factor f where latent s fires): precision and recall of
   "the latent fires" are ``c / fired`` and ``c / positives``;
2. **totals**: each latent's histogram over all rows (``latents x (B + 1)``), and full histograms of
   a few *candidate* pairs per factor for the best F1: a latent that fires on ``c`` of a factor's
   ``n`` rows has F1 <= ``2c / (c + n)`` at any threshold, so only latents whose bound reaches the best
   F1 found so far (at least that of "fires at all", exact from the counts) can hold the best F1.
   Candidates go best bound first, as many per pass as ``pair_budget_bytes`` allows; the rest wait
   for the next pass and are dropped once the best F1 found exceeds their bound;
3. **ranks**: AUROC is the Mann-Whitney statistic ``(sum over positive rows of g_s(bin) - n_pos^2 / 2)
   / (n_pos n_neg)`` with ``g_s(b)`` = rows below bin b + half the rows in it, a per-latent table from
   pass 2; summing it over each factor's rows is one sparse product per batch. Candidates left over
   from pass 2 are histogrammed alongside; more passes run only while some are left (and for a pair
   whose threshold :meth:`request_thresholds` asks for and that was never a candidate).

Every count is an integer (or half-integer) held exactly in float64, so AUROC, best F1, its latent and
threshold, precision and recall equal those of the full histograms (tests compare them). Work per
batch is a few sparse products over the labelled rows: no loop over factors.
"""

from __future__ import annotations

import logging

import torch

from vision_sae_lens.benchmark.metrics import best_f1_from_histograms
from vision_sae_lens.errors import ConfigError

logger = logging.getLogger(__name__)

COUNTS, TOTALS, RANKS, PAIRS, DONE = "counts", "totals", "ranks", "pairs", "done"
_CHUNK_ELEMENTS = 2**23
"""Latents are processed in chunks of about this many (row, latent) values (64 MiB in float64)."""


class FactorRecovery:
    """Streams (latent activations, factor labels) batches pass after pass until :attr:`done`.

    Each pass: call :meth:`add` for every batch, then :meth:`end_pass`. Labels are ``(row, factor)``
    index pairs of the positive labels (see :func:`label_pairs`).
    """

    def __init__(
        self, n_latents: int, n_factors: int, *, n_bins: int = 256, pair_budget_bytes: int = 2**28
    ) -> None:
        if n_bins < 1:
            raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
        s, f = int(n_latents), int(n_factors)
        self.n_latents, self.n_factors, self.n_bins = s, f, int(n_bins)
        self.pair_budget = max(1, int(pair_budget_bytes) // ((n_bins + 1) * 8))
        """Pairs whose full histograms one pass keeps."""
        self.phase = COUNTS
        self.passes = 0
        self.n_rows = 0
        self.max_s = torch.zeros(s, dtype=torch.float64)
        self.fired_s = torch.zeros(s, dtype=torch.float64)
        self.n_pos_f = torch.zeros(f, dtype=torch.float64)
        self.cofire_fs = torch.zeros(f, s, dtype=torch.float64)
        self.total_sb: torch.Tensor | None = None
        self.rank_sum_fs: torch.Tensor | None = None
        self.best_f1_f = torch.zeros(f, dtype=torch.float64)
        self.best_f1_latent_f = torch.zeros(f, dtype=torch.long)
        self._floor_f = torch.zeros(f, dtype=torch.float64)
        self._g_sb: torch.Tensor | None = None
        self._ranked = False
        self._evaluated_fs = torch.zeros(f, s, dtype=torch.bool)
        self._thresholds: list[tuple[torch.Tensor, torch.Tensor]] = []  # (factor * s + latent, threshold)
        self._wanted: set[tuple[int, int]] = set()
        self._pairs: tuple[torch.Tensor, torch.Tensor] | None = None  # (factor, latent) kept this pass
        self._pair_start_f = torch.zeros(f + 1, dtype=torch.long)
        self._pos_pb: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        """True once every statistic is final."""
        return self.phase == DONE

    # ------------------------------------------------------------------------------ streaming
    def add(self, acts_ns: torch.Tensor, rows: torch.Tensor, factors: torch.Tensor) -> None:
        """Fold a batch in: ``acts_ns`` latents of n rows; ``rows[i]`` carries factor ``factors[i]``."""
        if self.phase == DONE:
            raise ConfigError("FactorRecovery is done; no further pass is needed")
        acts_ns = acts_ns.detach().cpu()
        if acts_ns.dim() != 2 or acts_ns.shape[1] != self.n_latents:
            raise ConfigError(f"expected (rows, {self.n_latents}) latents, got {tuple(acts_ns.shape)}")
        rows, factors = rows.long().cpu(), factors.long().cpu()
        if self.phase == COUNTS:
            _check_batch(acts_ns, rows, factors, self.n_factors)
            self._add_counts(acts_ns, rows, factors)
        else:
            if self.phase == TOTALS:
                self._add_totals(acts_ns)
            elif self.phase == RANKS:
                self._add_ranks(acts_ns, rows, factors)
            self._add_pair_histograms(acts_ns, rows, factors)

    def end_pass(self) -> None:
        """Finish the current pass and choose what the next one (if any) computes."""
        self.passes += 1
        if self.phase == COUNTS:
            if self.n_rows == 0:
                raise ConfigError("no rows were added")
            self.max_s = self.max_s.clamp_min(1e-12)
            self.total_sb = torch.zeros(self.n_latents, self.n_bins + 1, dtype=torch.float64)
            # The F1 of "fires at all" (threshold bin 1) is exact for every pair: the best reaches it.
            fires_f1_fs = (
                2 * self.cofire_fs / (self.fired_s[None, :] + self.n_pos_f[:, None]).clamp_min(1e-12)
            )
            self._floor_f = fires_f1_fs.max(1).values
            self.phase = TOTALS
            self._plan_pairs()  # candidates need only the counts; their histograms fill in pass 2
            return
        self._score_pairs()
        if self.phase == TOTALS:
            self.rank_sum_fs = torch.zeros(self.n_factors, self.n_latents, dtype=torch.float64)
            self.phase = RANKS
            self._plan_pairs()
            return
        if self.phase == RANKS:
            self._ranked, self._g_sb = True, None
        self.phase = PAIRS
        self._plan_pairs()
        if self._pairs is None:
            self.phase = DONE

    def request_thresholds(self, latent_f: torch.Tensor) -> None:
        """Ask for the best-F1 threshold of latent ``latent_f[k]`` for factor ``k`` (after the ranks pass;
        adds a pass only for pairs whose histogram was not kept)."""
        if not self._ranked:
            raise ConfigError("thresholds can be requested once the ranks pass has ended")
        self._wanted |= {
            (k, int(s)) for k, s in enumerate(latent_f.tolist()) if not self._evaluated_fs[k, int(s)]
        }
        if self._wanted:
            self.phase = PAIRS
            self._plan_pairs()

    # ------------------------------------------------------------------------------- results
    def auroc_fs(self, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """``(factors lo:hi, latents)`` AUROC of "this row carries the factor" (NaN without positives or
        negatives)."""
        if self.rank_sum_fs is None or not self._ranked:
            raise ConfigError("AUROC is known once the ranks pass has ended")
        n_pos = self.n_pos_f[lo:hi, None]
        n_neg = self.n_rows - n_pos
        out = (self.rank_sum_fs[lo:hi] - 0.5 * n_pos * n_pos) / (n_pos * n_neg)
        return torch.where((n_pos > 0) & (n_neg > 0), out, torch.tensor(float("nan"), dtype=torch.float64))

    def best_auroc(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per factor the best AUROC over latents (NaN counts as 0) and its latent (the first among equals)."""
        best, latent = (
            torch.zeros(self.n_factors, dtype=torch.float64),
            torch.zeros(self.n_factors, dtype=torch.long),
        )
        for lo, hi in self._factor_chunks():
            best[lo:hi], latent[lo:hi] = torch.nan_to_num(self.auroc_fs(lo, hi), nan=0.0).max(1)
        return best, latent

    def precision_sf(self, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """``(latents lo:hi, factors)`` share of a latent's firing rows that carry the factor."""
        return (self.cofire_fs[:, lo:hi] / self.fired_s[lo:hi].clamp_min(1e-12)).T

    def recall_sf(self, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """``(latents lo:hi, factors)`` share of a factor's rows on which the latent fires."""
        return (self.cofire_fs[:, lo:hi] / self.n_pos_f[:, None].clamp_min(1e-12)).T

    def _bound(self, lo: int | torch.Tensor, hi: int | None = None) -> torch.Tensor:
        """F1 of a latent at any threshold <= that of perfect precision at its co-firing recall:
        ``2c / (c + n)``, for factors ``lo:hi`` (or the factor indices ``lo``)."""
        rows = lo if isinstance(lo, torch.Tensor) else slice(lo, hi)
        c = self.cofire_fs[rows]
        return 2 * c / (c + self.n_pos_f[rows, None]).clamp_min(1e-12)

    def _factor_chunks(self) -> list[tuple[int, int]]:
        """Factor ranges whose (factors, latents) float64 temporaries hold about _CHUNK_ELEMENTS values."""
        step = max(1, _CHUNK_ELEMENTS // self.n_latents)
        return [(lo, min(lo + step, self.n_factors)) for lo in range(0, self.n_factors, step)]

    # ------------------------------------------------------------------------------- passes
    def _add_counts(self, acts_ns: torch.Tensor, rows: torch.Tensor, factors: torch.Tensor) -> None:
        labels_fn = _label_matrix(rows, factors, self.n_factors, len(acts_ns))
        self.n_rows += len(acts_ns)
        self.n_pos_f += torch.bincount(factors, minlength=self.n_factors).double()
        fires = acts_ns > 0
        self.fired_s += fires.sum(0).double()
        if len(acts_ns):
            self.max_s = torch.maximum(
                self.max_s, acts_ns.max(0).values.double()
            )  # no float64 copy of the batch
        for lo, hi in _chunks(self.n_latents, len(acts_ns)):
            self.cofire_fs[:, lo:hi] += torch.sparse.mm(labels_fn, fires[:, lo:hi].double())

    def _bins(self, acts: torch.Tensor, max_: torch.Tensor) -> torch.Tensor:
        """Bin of every activation: 0 for ``a <= 0``, else ``ceil(a / max * B)`` in 1..B."""
        a = acts.double()
        b = torch.ceil(a / max_ * self.n_bins).clamp(1, self.n_bins).long()
        return torch.where(a > 0, b, torch.zeros_like(b))

    def _add_totals(self, acts_ns: torch.Tensor) -> None:
        assert self.total_sb is not None, "set when the counts pass ends"
        width = self.n_bins + 1
        for lo, hi in _chunks(self.n_latents, len(acts_ns)):
            flat = self._bins(acts_ns[:, lo:hi], self.max_s[lo:hi]) + torch.arange(hi - lo).mul(width)
            counts = torch.bincount(flat.reshape(-1), minlength=(hi - lo) * width)
            self.total_sb[lo:hi] += counts.view(hi - lo, width).double()

    def _add_ranks(self, acts_ns: torch.Tensor, rows: torch.Tensor, factors: torch.Tensor) -> None:
        assert self.total_sb is not None and self.rank_sum_fs is not None, "set by the earlier passes"
        labels_fn = _label_matrix(rows, factors, self.n_factors, len(acts_ns))
        width = self.n_bins + 1
        if self._g_sb is None:
            # g[s, b] = rows of latent s below bin b + half of those in it: a positive row in bin b
            # "wins" against that many negative-or-positive rows; the positives' own share is n_pos^2 / 2.
            self._g_sb = torch.cumsum(self.total_sb, 1) - 0.5 * self.total_sb
        g_sb = self._g_sb
        for lo, hi in _chunks(self.n_latents, len(acts_ns)):
            flat = self._bins(acts_ns[:, lo:hi], self.max_s[lo:hi]) + torch.arange(hi - lo).mul(width)
            g_ns = g_sb[lo:hi].reshape(-1)[flat]
            self.rank_sum_fs[:, lo:hi] += torch.sparse.mm(labels_fn, g_ns)

    def _add_pair_histograms(self, acts_ns: torch.Tensor, rows: torch.Tensor, factors: torch.Tensor) -> None:
        if self._pairs is None or self._pos_pb is None or len(rows) == 0:
            return
        pair_latent, start_f = self._pairs[1], self._pair_start_f
        width = self.n_bins + 1
        per_row = start_f[factors + 1] - start_f[factors]  # kept pairs of each positive's factor
        ends = torch.cumsum(per_row, 0)
        lo = 0
        while lo < len(rows):
            # Expand each positive (row, factor) into one entry per kept pair of its factor, in chunks.
            hi = int(torch.searchsorted(ends, int(ends[lo - 1] if lo else 0) + _CHUNK_ELEMENTS, right=True))
            hi = max(hi, lo + 1)
            counts = per_row[lo:hi]
            r = torch.repeat_interleave(rows[lo:hi], counts)
            first = torch.repeat_interleave(start_f[factors[lo:hi]], counts)
            offset = torch.arange(len(r)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            pair = first + offset
            latent = pair_latent[pair]
            bins = self._bins(acts_ns[r, latent], self.max_s[latent])
            # index_add_ into the histograms themselves: no second histogram-sized buffer.
            self._pos_pb.view(-1).index_add_(0, pair * width + bins, torch.ones(len(r), dtype=torch.float64))
            lo = hi

    # ------------------------------------------------------------------------- candidates
    def _plan_pairs(self) -> None:
        """Choose the (factor, latent) pairs whose histograms the next pass keeps, best bound first."""
        best = torch.maximum(self.best_f1_f, self._floor_f)
        open_fs = torch.zeros(self.n_factors, self.n_latents, dtype=torch.bool)
        for lo, hi in self._factor_chunks():
            # A pair stays a candidate while its bound reaches the best F1 found (ties included: the
            # reference takes the first latent among equals); the slack only adds candidates.
            reach = best[lo:hi, None] * (1 - 1e-12)
            open_fs[lo:hi] = (self._bound(lo, hi) >= reach) & (reach > 0) & ~self._evaluated_fs[lo:hi]
        for k, s in self._wanted:
            open_fs[k, s] = True
        n_open_f = open_fs.sum(1)
        cap = _cap(n_open_f, self.pair_budget)
        big = (n_open_f > cap).nonzero().flatten()
        step = max(1, _CHUNK_ELEMENTS // self.n_latents)
        for lo in range(0, len(big), step):
            rows = big[lo : lo + step]
            bound = torch.where(open_fs[rows], self._bound(rows), torch.tensor(-1.0, dtype=torch.float64))
            for k, s in self._wanted:  # asked for: kept first
                bound[rows == k, s] = 2.0
            keep = torch.topk(bound, cap, dim=1).indices
            open_fs[rows] = False
            open_fs[rows[:, None], keep] = True
        factor, latent = open_fs.nonzero(as_tuple=True)  # sorted by factor
        if len(factor) == 0:
            self._pairs, self._pos_pb = None, None
            return
        self._pairs = (factor, latent)
        self._pair_start_f = torch.cat(
            [
                torch.zeros(1, dtype=torch.long),
                torch.cumsum(torch.bincount(factor, minlength=self.n_factors), 0),
            ]
        )
        self._pos_pb = torch.zeros(len(factor), self.n_bins + 1, dtype=torch.float64)
        if self.passes > 2 or len(big):
            logger.info("best-F1 pass %d: %d (factor, latent) pairs", self.passes + 1, len(factor))

    def _score_pairs(self) -> None:
        if self._pairs is None or self._pos_pb is None:
            return
        assert self.total_sb is not None, "set when the counts pass ends"
        factor, latent = self._pairs
        f1_p = torch.empty(len(factor), dtype=torch.float64)
        threshold_p = torch.empty(len(factor), dtype=torch.float64)
        step = max(1, _CHUNK_ELEMENTS // (self.n_bins + 1))  # F1 at every threshold: chunks of pairs
        for lo in range(0, len(factor), step):
            pos_pb, s = self._pos_pb[lo : lo + step], latent[lo : lo + step]
            res = best_f1_from_histograms(pos_pb, self.total_sb[s] - pos_pb, self.max_s[s], self.n_bins)
            f1_p[lo : lo + step], threshold_p[lo : lo + step] = res["f1_sf"], res["threshold_sf"]
        self._evaluated_fs[factor, latent] = True
        self._thresholds.append((factor * self.n_latents + latent, threshold_p))
        self._wanted = {(k, s) for k, s in self._wanted if not self._evaluated_fs[k, s]}
        # The best pair of each factor in this pass (first latent among equal F1), then merge.
        top_f = torch.full((self.n_factors,), -1.0, dtype=torch.float64).scatter_reduce(
            0, factor, f1_p, "amax"
        )
        at_top = f1_p == top_f[factor]
        first_f = torch.full((self.n_factors,), self.n_latents, dtype=torch.long)
        first_f = first_f.scatter_reduce(0, factor[at_top], latent[at_top], "amin")
        better = (top_f > self.best_f1_f) | ((top_f == self.best_f1_f) & (first_f < self.best_f1_latent_f))
        self.best_f1_f = torch.where(better, top_f, self.best_f1_f)
        self.best_f1_latent_f = torch.where(better, first_f, self.best_f1_latent_f)
        self._pairs, self._pos_pb = None, None

    def thresholds_of(self, latent_f: torch.Tensor) -> torch.Tensor:
        """Best-F1 threshold (``activation > t``) of latent ``latent_f[k]`` for factor ``k``; every pair
        must have been requested with :meth:`request_thresholds` (and the passes run) first."""
        keys = torch.arange(self.n_factors) * self.n_latents + latent_f.long()
        out = torch.full((self.n_factors,), float("nan"), dtype=torch.float64)
        for pair_keys, thresholds in self._thresholds:
            hit = torch.isin(pair_keys, keys)
            out[pair_keys[hit] // self.n_latents] = thresholds[hit]
        if bool(out.isnan().any()):
            raise ConfigError("thresholds_of asks for pairs that were not requested (request_thresholds)")
        return out


def label_pairs(labels_nf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, factor)`` index pairs of the True entries of a dense ``(n, F)`` bool label matrix."""
    rows, factors = labels_nf.bool().nonzero(as_tuple=True)
    return rows, factors


def _label_matrix(rows: torch.Tensor, factors: torch.Tensor, n_factors: int, n_rows: int) -> torch.Tensor:
    """Sparse ``(F, n)`` float64 matrix with a 1 at each (factor, row) pair."""
    idx = torch.stack([factors.long(), rows.long()])
    ones = torch.ones(len(rows), dtype=torch.float64)
    return torch.sparse_coo_tensor(idx, ones, (n_factors, n_rows), check_invariants=False).coalesce()


def _chunks(n_latents: int, n_rows: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(1, n_rows))
    return [(lo, min(lo + step, n_latents)) for lo in range(0, n_latents, step)]


def _cap(n_open_f: torch.Tensor, budget: int) -> int:
    """The largest per-factor cap C with sum(min(open_f, C)) <= budget (at least 1)."""
    counts = torch.sort(n_open_f).values
    if int(counts.sum()) <= budget:
        return int(counts.max()) if len(counts) else 1
    lo, hi = 1, int(counts.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(counts.clamp_max(mid).sum()) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _check_batch(acts_ns: torch.Tensor, rows: torch.Tensor, factors: torch.Tensor, n_factors: int) -> None:
    if not bool(torch.isfinite(acts_ns).all()):
        raise ConfigError(
            "the SAE's latent activations hold NaN/inf: check the rows (ActivationStore.verify()) and the SAE"
        )
    if len(rows) != len(factors):
        raise ConfigError(f"{len(rows)} label rows but {len(factors)} label factors")
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(acts_ns)):
        raise ConfigError(f"label rows must index the batch's {len(acts_ns)} rows")
    if len(factors) and (int(factors.min()) < 0 or int(factors.max()) >= n_factors):
        raise ConfigError(f"label factors must lie in 0..{n_factors - 1}")
