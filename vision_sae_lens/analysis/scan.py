"""One streaming pass of an SAE over a dataset: latents per row, reduced per image.

Sources: an activation store (rows of the SAE's site read in (image, token) order; no backbone
needed) or raw images with a hooked model. Each batch of rows is encoded by the SAE and handed to
*consumers* twice: as rows (``feats_ns``, ``image_n``, ``token_n``) and as finished images (per-image
max, the token where it occurs, sum and token count). An image whose rows straddle two batches is
carried over, so per-image results are exact whatever the batch size. Memory is one batch of
latents plus what the consumers keep; nothing (images x tokens x d_sae) is ever held.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from vision_sae_lens.analysis._common import (
    SAEView,
    encode_acts,
    image_batches,
    image_count,
    sae_view,
    site_acts,
)
from vision_sae_lens.contracts import ActivationStoreReader
from vision_sae_lens.errors import ConfigError, NonFiniteError, SAEMismatchError, StoreError

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.compat import SAE

logger = logging.getLogger(__name__)
_NO_TOKEN = torch.iinfo(torch.int32).max


class ImageReduction:
    """Finished images of a scan: per image and latent, the max (and where), the sum and the token count.

    ``max_ms`` is computed at once (every consumer needs it); the token of each max and the sums are
    computed only when a consumer asks, from the batch's latents kept as an (m, t, s) view, because
    on a CPU an argmax or a float64 sum over the token axis costs several times the SAE's encoder.
    """

    def __init__(
        self,
        image_idx: torch.Tensor,
        max_ms: torch.Tensor,
        count_m: torch.Tensor,
        *,
        feats_mts: torch.Tensor | None = None,
        token_mt: torch.Tensor | None = None,
        argmax_ms: torch.Tensor | None = None,
        sum_ms: torch.Tensor | None = None,
    ) -> None:
        self.image_idx = image_idx
        """(m,) int64 image indices, ascending."""
        self.max_ms = max_ms
        """(m, s) max activation of each latent over the image's tokens."""
        self.count_m = count_m
        """(m,) number of tokens seen for each image."""
        if (feats_mts is None or token_mt is None) and (argmax_ms is None or sum_ms is None):
            raise ConfigError(
                "an ImageReduction needs the latents (feats_mts, token_mt) or argmax_ms and sum_ms"
            )
        self._feats_mts, self._token_mt = feats_mts, token_mt
        self._argmax_ms, self._sum_ms = argmax_ms, sum_ms

    def _lazy(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Set together at construction whenever argmax/sum are left to be computed on demand.
        if self._feats_mts is None or self._token_mt is None:
            raise ConfigError("this ImageReduction holds no per-token activations to reduce")
        return self._feats_mts, self._token_mt

    @property
    def argmax_ms(self) -> torch.Tensor:
        """(m, s) int64 token index of each max (the lowest such token on ties)."""
        if self._argmax_ms is None:
            # argmax returns the first maximal position, i.e. the lowest token since tokens ascend.
            feats_mts, token_mt = self._lazy()
            self._argmax_ms = token_mt.gather(1, feats_mts.argmax(dim=1))
        return self._argmax_ms

    def argmax_at(self, image_p: torch.Tensor, latent_p: torch.Tensor) -> torch.Tensor:
        """(p,) token index of the max for the (image position, latent) pairs given: only those pairs
        are looked at, so a consumer that needs few of them (top-k entrants) stays cheap."""
        if self._argmax_ms is not None or self._feats_mts is None:
            return self.argmax_ms[image_p, latent_p]
        feats_mts, token_mt = self._lazy()
        cols_pt = feats_mts[image_p, :, latent_p]
        return token_mt[image_p].gather(1, cols_pt.argmax(dim=1, keepdim=True)).squeeze(1)

    @property
    def sum_ms(self) -> torch.Tensor:
        """(m, s) float64 sum of activations over the image's tokens (float64 so that how an image's
        rows were split across batches does not change its mean, and so ties between images stay ties)."""
        if self._sum_ms is None:
            self._sum_ms = self._lazy()[0].sum(dim=1, dtype=torch.float64)
        return self._sum_ms

    @property
    def mean_ms(self) -> torch.Tensor:
        """(m, s) float32 mean activation over the image's tokens."""
        return (self.sum_ms / self.count_m.clamp(min=1).unsqueeze(1).double()).float()

    def take(self, sl: slice) -> ImageReduction:
        """The images ``sl`` (a slice of positions), keeping whatever is still lazy lazy."""
        lazy = self._feats_mts is not None and self._token_mt is not None
        feats_mts, token_mt = self._lazy() if lazy else (None, None)
        return ImageReduction(
            self.image_idx[sl],
            self.max_ms[sl],
            self.count_m[sl],
            feats_mts=None if feats_mts is None else feats_mts[sl],
            token_mt=None if token_mt is None else token_mt[sl],
            argmax_ms=None if self._argmax_ms is None else self._argmax_ms[sl],
            sum_ms=None if self._sum_ms is None else self._sum_ms[sl],
        )

    def compact(self) -> ImageReduction:
        """The same images holding copies, not views, of the batch's latents (so the batch can be freed)."""
        if self._feats_mts is None:
            return self
        return ImageReduction(
            self.image_idx,
            self.max_ms,
            self.count_m,
            feats_mts=self._feats_mts.clone(),
            token_mt=self._token_mt,
        )

    def __len__(self) -> int:
        return int(self.image_idx.numel())


class Consumer(Protocol):
    """Something a scan feeds: ``rows`` per batch, ``images`` per batch of finished images."""

    def rows(self, feats_ns: torch.Tensor, image_n: torch.Tensor, token_n: torch.Tensor) -> None: ...

    def images(self, red: ImageReduction) -> None: ...


@dataclass
class Source:
    """What a scan reads: row batches and, when known, labels per image."""

    view: SAEView
    batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    total_rows: int | None
    labels: Sequence[int] | np.ndarray | None
    label_names: list[str] | None


def scan(
    sae: SAE,
    source: Any,
    consumers: Sequence[Consumer],
    *,
    model: HookedSAEViT | None = None,
    batch_size: int = 2048,
    progress: bool = True,
    labels_out: list | None = None,
    max_rows: int | None = None,
    seed: int = 0,
) -> SAEView:
    """Encode every row of ``source`` with ``sae`` and feed ``consumers``; returns the SAE's view.

    ``source`` is an ``ActivationStore`` (anything with ``ordered``), raw images (with ``model``), or an
    iterable of ``(acts_nd, image_n, token_n)`` batches in (image, token) order (with ``model`` or SAE
    vision metadata for the layout). ``max_rows``: a store with more rows is sampled, a seeded random
    draw of whole images (stratified by label) holding at most that many rows
    (:func:`vision_sae_lens.train.evaluate.sampled_runs`, the rows evaluation counts firing on).
    """
    src = open_source(
        sae, source, model=model, batch_size=batch_size, labels_out=labels_out, max_rows=max_rows, seed=seed
    )
    reducer = _PerImageReducer()
    bar = tqdm(total=src.total_rows, desc="scan", unit="row", unit_scale=True, disable=not progress)
    for acts_nd, image_n, token_n in src.batches:
        _check_finite(acts_nd, image_n, f"activations at {src.view.site}")
        feats_ns = encode_acts(sae, acts_nd).float().cpu()
        image_n, token_n = image_n.long().cpu(), token_n.long().cpu()
        _check_finite(feats_ns, image_n, "SAE latents (the SAE's weights hold NaN/Inf?)")
        for c in consumers:
            c.rows(feats_ns, image_n, token_n)
        for done in reducer.update(feats_ns, image_n, token_n):
            for c in consumers:
                c.images(done)
        bar.update(feats_ns.shape[0])
    bar.close()
    last = reducer.flush()
    if last is not None:
        for c in consumers:
            c.images(last)
    return src.view


def _check_finite(values_nx: torch.Tensor, image_n: torch.Tensor, what: str) -> None:
    """Refuse NaN / Inf rows: every statistic, top-k list and page built on them would be meaningless."""
    bad_n = ~torch.isfinite(values_nx).all(dim=-1)
    if bool(bad_n.any()):
        images = torch.unique(image_n[bad_n.to(image_n.device)]).tolist()
        raise NonFiniteError(
            f"non-finite {what} in {int(bad_n.sum())} rows (images {images[:5]}{' ...' if len(images) > 5 else ''}); "
            "nothing was analysed. For a store, run `vision-sae-lens verify` on it and re-record it."
        )


def open_source(
    sae: SAE,
    source: Any,
    *,
    model: HookedSAEViT | None = None,
    batch_size: int = 2048,
    labels_out: list | None = None,
    max_rows: int | None = None,
    seed: int = 0,
) -> Source:
    """Turn a store, images or a batch iterable into a :class:`Source` for ``sae`` (a store with more than
    ``max_rows`` rows: a seeded random sample of its images, see :func:`scan`)."""
    if hasattr(source, "ordered"):
        return _store_source(sae, source, batch_size, max_rows, seed)
    if isinstance(source, (list, tuple, torch.Tensor)) or hasattr(source, "__getitem__"):
        if model is None:
            raise ConfigError("top-k / statistics over raw images need the hooked model: pass model=...")
        return _image_source(sae, source, model, max(1, batch_size // model.layout.n_tokens), labels_out)
    view = sae_view(sae, model)
    return Source(view, iter(source), None, None, None)


def _store_source(
    sae: SAE, store: ActivationStoreReader, batch_size: int, max_rows: int | None, seed: int
) -> Source:
    site = sae.cfg.metadata.hook_name
    sites = list(store.sites)
    if site not in sites:
        raise SAEMismatchError(f"the SAE reads {site!r} but the store holds {sites}; record that site first.")
    width = int(store.site_dim(site))
    if width != int(sae.cfg.d_in):
        raise SAEMismatchError(
            f"the SAE reads d_in={sae.cfg.d_in} but the store's {site} rows have width {width}."
        )
    view = sae_view(sae, layout=store.layout)
    keep_t = None
    store_tokens = store.tokens
    if view.tokens != store_tokens:
        have = set(store.layout.token_indices(store_tokens).tolist())
        want = set(view.token_idx.tolist())
        if not want <= have:
            logger.warning(
                "the SAE covers %s tokens but the store holds %s; scanning the tokens both have",
                view.tokens,
                store_tokens,
            )
        keep_t = torch.zeros(store.layout.n_tokens, dtype=torch.bool)
        keep_t[sorted(want & have)] = True

    # Whole images per batch (each image has the same rows) let the per-image reduction reshape.
    per_image = len(store.layout.token_indices(store_tokens))
    batch_size = max(per_image, batch_size // per_image * per_image)

    runs = None
    if max_rows is not None and int(store.n_rows) > max_rows:
        from vision_sae_lens.train.evaluate import sampled_runs

        runs = sampled_runs(store, max_rows, seed)
        logger.info(
            "scanning a seeded random sample of %d images (%d of the store's %d rows; raise max_rows to scan more)",
            len(runs), int((runs[:, 1] - runs[:, 0]).sum()), int(store.n_rows),
        )  # fmt: skip

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        rows_iter: Iterator[Any]
        if runs is None:
            rows_iter = ((r.acts, r.image_idx, r.token_idx) for r in store.ordered(site, batch_size))
        else:
            rows_iter = _run_batches(store, site, runs, batch_size)
        for rows in rows_iter:
            acts, image_n, token_n = (torch.as_tensor(x) for x in rows)
            if keep_t is not None:
                m = keep_t[token_n.long()]
                acts, image_n, token_n = acts[m], image_n[m], token_n[m]
            if acts.shape[0]:
                yield acts, image_n, token_n

    total = int(store.n_rows) if runs is None else int((runs[:, 1] - runs[:, 0]).sum())
    return Source(view, batches(), total, store.labels, store.label_names)


def _run_batches(
    store: ActivationStoreReader, site: str, runs: np.ndarray, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(acts, image_idx, token_idx)`` of the row runs ``runs`` (sorted, whole images) in order, batches of
    up to ``batch_size`` rows, each read piece by piece (only the rows asked for)."""
    pieces: list[tuple[int, int]] = []
    filled = 0
    for lo, hi in runs.tolist():
        while lo < hi:
            take = min(hi - lo, batch_size - filled)
            pieces.append((lo, lo + take))
            filled, lo = filled + take, lo + take
            if filled == batch_size:
                yield _read_pieces(store, site, pieces)
                pieces, filled = [], 0
    if pieces:
        yield _read_pieces(store, site, pieces)


def _read_pieces(
    store: ActivationStoreReader, site: str, pieces: list[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    provenance = [store.provenance(lo, hi) for lo, hi in pieces]
    return (
        torch.cat([store.read_rows(site, lo, hi) for lo, hi in pieces]),
        torch.from_numpy(np.concatenate([p[0] for p in provenance])),
        torch.from_numpy(np.concatenate([p[1] for p in provenance])),
    )


def _image_source(
    sae: SAE, images: Any, model: HookedSAEViT, batch_size: int, labels_out: list | None
) -> Source:
    view = sae_view(sae, model)
    token_idx = view.token_idx

    def batches():
        for offset, batch, labels in image_batches(images, batch_size):
            if labels_out is not None:
                labels_out.extend(labels)
            acts_btd = site_acts(model, batch, view.site)[:, token_idx.to(model.device)]
            b, t, _ = acts_btd.shape
            image_n = torch.arange(offset, offset + b).repeat_interleave(t)
            yield acts_btd.flatten(0, 1), image_n, token_idx.repeat(b)

    n = image_count(images)
    return Source(view, batches(), n * len(token_idx), None, getattr(images, "label_names", None))


class _PerImageReducer:
    """Per-image reductions over rows sorted by (image, token), carrying the last image of a batch.

    ``update`` returns the images a batch finished, in ascending order: the carried image (when the
    batch starts with another image, or merged with the batch's first rows when it continues), then
    the batch's own complete images. The carried image is the only one ever merged, so the batch's
    images keep their lazy parts.
    """

    def __init__(self) -> None:
        self.carry: ImageReduction | None = None

    def update(self, feats_ns: torch.Tensor, image_n: torch.Tensor, token_n: torch.Tensor):
        if image_n.numel() > 1 and bool((image_n[1:] < image_n[:-1]).any()):
            raise StoreError("rows must come in (image, token) order; use store.ordered(...), not shuffled")
        red = _reduce(feats_ns, image_n, token_n)
        done: list[ImageReduction] = []
        if self.carry is not None:
            first, carried = int(red.image_idx[0]), int(self.carry.image_idx[0])
            if first < carried:
                raise StoreError("rows must come in (image, token) order; an earlier image reappeared")
            if first == carried:
                merged = _merge(self.carry, red.take(slice(0, 1)))
                if len(red) == 1:
                    self.carry = merged
                    return done
                done.append(merged)
                red = red.take(slice(1, None))
            else:
                done.append(self.carry)
        self.carry = red.take(slice(-1, None)).compact()
        if len(red) > 1:
            done.append(red.take(slice(0, -1)))
        return done

    def flush(self) -> ImageReduction | None:
        carry, self.carry = self.carry, None
        return carry


def _reduce(feats_ns: torch.Tensor, image_n: torch.Tensor, token_n: torch.Tensor) -> ImageReduction:
    images, seg_n, counts = torch.unique_consecutive(image_n, return_inverse=True, return_counts=True)
    m, s = images.numel(), feats_ns.shape[1]
    if bool((counts == counts[0]).all()) and bool((token_n.view(m, -1).diff(dim=1) > 0).all()):
        # Whole images of equal length (the usual case): a reshape instead of scatters; the argmax
        # and the sums stay lazy (see ImageReduction).
        feats_mts = feats_ns.view(m, -1, s)
        return ImageReduction(
            images, feats_mts.amax(dim=1), counts, feats_mts=feats_mts, token_mt=token_n.view(m, -1)
        )
    index_ns = seg_n.unsqueeze(1).expand(-1, s)
    max_ms = feats_ns.new_empty(m, s).scatter_reduce_(0, index_ns, feats_ns, "amax", include_self=False)
    is_max_ns = feats_ns == max_ms[seg_n]
    tok_ns = torch.where(is_max_ns, token_n.int().unsqueeze(1), _NO_TOKEN)
    argmax_ms = torch.full((m, s), _NO_TOKEN, dtype=torch.int32).scatter_reduce_(0, index_ns, tok_ns, "amin")
    sum_ms = torch.zeros(m, s, dtype=torch.float64).index_add_(0, seg_n, feats_ns.double())
    return ImageReduction(images, max_ms, counts, argmax_ms=argmax_ms.long(), sum_ms=sum_ms)


def _merge(a: ImageReduction, b: ImageReduction) -> ImageReduction:
    """Combine two partial reductions of the same image (``a`` holds its earlier tokens)."""
    keep_a = a.max_ms >= b.max_ms
    return ImageReduction(
        a.image_idx,
        torch.where(keep_a, a.max_ms, b.max_ms),
        a.count_m + b.count_m,
        argmax_ms=torch.where(keep_a, a.argmax_ms, b.argmax_ms),
        sum_ms=a.sum_ms + b.sum_ms,
    )
