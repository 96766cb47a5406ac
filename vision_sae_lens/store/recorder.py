"""``cache_activations``: run a hooked backbone over an image source and record sites to a store.

The source's images are cut into shards of ``shard_images`` consecutive images; each shard is
processed in batches that never cross a shard boundary, so a shard's bytes depend only on its images
(not on which process, or which run after a crash, records it). Three stages overlap: a loader thread
decodes and preprocesses the next batch, the main thread runs the forward (stopped after the deepest
site), and a writer thread appends rows to the shard's files and commits finished shards. A shard is
committed atomically (see :mod:`vision_sae_lens.store.writer`); re-running the same call skips
committed shards, so an interrupted run resumes, and a run with other settings is refused.

The plan of a recording (settings, shard ranges, row widths) is :mod:`~vision_sae_lens.store.plan`'s; the
loader (decoding and preprocessing into :class:`~vision_sae_lens.store.batches.ImageBatch` es) is
:mod:`~vision_sae_lens.store.batches`'; this module runs the forward and writes the shards.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vision_sae_lens import fsutil
from vision_sae_lens.data.sources import open_images
from vision_sae_lens.errors import ConfigError, InputTypeError, NonFiniteError, StoreError, escape_control
from vision_sae_lens.store import checks
from vision_sae_lens.store import format as fmt
from vision_sae_lens.store.batches import ImageBatch, load_batches
from vision_sae_lens.store.distributed import DistContext, default_device, join_distributed
from vision_sae_lens.store.plan import AUTOCAST_DTYPES, RecordingPlan, make_plan
from vision_sae_lens.store.reader import ActivationStore
from vision_sae_lens.store.writer import (
    ShardBuilder,
    check_claimable,
    check_or_claim_directory,
    finalize_store,
    source_state,
)

if TYPE_CHECKING:
    from vision_sae_lens.backbones import HookedSAEViT
    from vision_sae_lens.contracts import ImageSource
    from vision_sae_lens.data.sources import ImagesLike

logger = logging.getLogger(__name__)


def cache_activations(
    model: HookedSAEViT | str,
    images: ImagesLike,
    *,
    sites: Sequence[str],
    out_dir: str | os.PathLike,
    tokens: str = "patches",
    dtype: str = "float16",
    batch_size: int = 64,
    shard_images: int | None = None,
    device: str | torch.device | None = None,
    pretrained: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    limit: int | None = None,
    streaming: bool = False,
    loader_threads: int | None = None,
    autocast: str | None = None,
    progress: bool = True,
) -> ActivationStore:
    """Record ``sites`` of ``model`` on ``images`` into the store ``out_dir`` and return it.

    ``model``: a :class:`~vision_sae_lens.backbones.HookedSAEViT` or a backbone id (loaded with
    ``pretrained`` and ``model_kwargs``). ``images``: anything :func:`vision_sae_lens.data.open_images`
    takes. ``tokens``: patches, cls, registers or all. ``dtype``: float32, float16 or bfloat16.
    ``shard_images``: images per shard (default: about 65,536 rows per shard). ``loader_threads``: threads
    that decode and preprocess images (default: half the CPU cores, at most 8; the output does not
    depend on it, so a resumed run may use another number). ``autocast``: ``bfloat16`` or ``float16`` runs
    the backbone's forward under ``torch.autocast`` (recorded in the store's settings, so a resume cannot mix
    precisions). Under ``torchrun`` each
    rank records its shards and rank 0 writes the manifest. Re-running the same call resumes or
    returns the finished store; other settings in the same ``out_dir`` raise StoreMismatchError.
    """
    if isinstance(sites, str):
        sites = [sites]
    if not sites or len(set(sites)) != len(sites):
        raise ConfigError(f"sites must be a non-empty list of distinct site names, got {list(sites)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if loader_threads is not None and loader_threads < 1:
        raise ConfigError(f"loader_threads must be >= 1, got {loader_threads}")
    if shard_images is not None and shard_images < 1:
        raise ConfigError(f"shard_images must be >= 1 (or None for ~65k rows per shard), got {shard_images}")
    fmt.check_dtype(dtype)
    if autocast not in AUTOCAST_DTYPES:
        raise ConfigError(
            f"autocast must be one of {', '.join(str(a) for a in AUTOCAST_DTYPES)}, got {autocast!r}"
        )
    root = Path(out_dir)
    check_claimable(root)  # a foreign non-empty directory is refused before the model is even loaded
    if not isinstance(model, str):
        model.check_names(list(sites))  # a model at hand: a misspelled site fails before anything is written
    ctx = join_distributed()
    lock = None
    try:
        if ctx.rank == 0:  # one lock per store: a second cache run into it is refused at once
            lock = _lock(root)
        hooked = _load_model(model, ctx, device=device, pretrained=pretrained, model_kwargs=model_kwargs)
        hooked.check_names(list(sites))  # a misspelled site fails before any image is opened
        source = open_images(images, streaming=streaming, limit=limit)
        plan = make_plan(
            hooked,
            source,
            list(sites),
            tokens=tokens,
            dtype=dtype,
            batch_size=batch_size,
            shard_images=shard_images,
            autocast=autocast,
        )
        outcome = ctx.broadcast(_claim(root, plan.settings, source_state(source)) if ctx.rank == 0 else None)
        if isinstance(outcome, Exception):
            raise outcome
        if not outcome:
            threads = loader_threads or max(1, min(8, (os.cpu_count() or 2) // 2))
            _record(hooked, source, plan, root, ctx, loader_threads=threads, progress=progress)
            ctx.barrier()
            if ctx.rank == 0:
                _merge(root, plan)
            ctx.barrier()
        else:
            logger.info("store %s is already complete; nothing to record", escape_control(root))
        return ActivationStore(root)
    finally:
        if lock is not None:
            lock.release()
        ctx.close()


def _load_model(
    model: HookedSAEViT | str,
    ctx: DistContext,
    *,
    device: str | torch.device | None,
    pretrained: bool,
    model_kwargs: dict[str, Any] | None,
) -> HookedSAEViT:
    from vision_sae_lens.backbones import HookedSAEViT

    if isinstance(model, str):
        model = HookedSAEViT.from_pretrained(model, pretrained=pretrained, **(model_kwargs or {}))
        model.to(device or default_device(ctx))
    elif device is not None:
        model.to(device)
    if not isinstance(model, HookedSAEViT):
        raise InputTypeError(f"model must be a HookedSAEViT or a backbone id, got {type(model).__name__}")
    return model.eval()


def _lock(root: Path) -> fsutil.DirLock:
    lock = fsutil.DirLock(root, what="cache run").acquire()
    # Under the lock no other writer exists, so any temp file is a killed run's leftover.
    if fsutil.remove_stale_temps(root):
        logger.info("removed temp files left by an interrupted run in %s", escape_control(root))
    return lock


def _claim(root: Path, settings: dict[str, Any], source_state: str | None) -> bool | Exception:
    try:
        return check_or_claim_directory(root, settings, source_state=source_state)
    except Exception as exc:  # broadcast to the other ranks, re-raised everywhere
        return exc


def _shard_done(root: Path, k: int) -> bool:
    record_path = root / fmt.record_file(k)
    if not record_path.is_file():
        return False
    record = fmt.read_json(record_path)
    entries = (*record["files"].values(), record["provenance"])
    # A record without block checksums was written by format-1 code: that shard is recorded again.
    return all(
        "block_sha256" in e
        and (root / e["path"]).is_file()
        and (root / e["path"]).stat().st_size == e["bytes"]
        for e in entries
    )


def _record(
    model: HookedSAEViT,
    source: ImageSource,
    plan: RecordingPlan,
    root: Path,
    ctx: DistContext,
    *,
    loader_threads: int,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    todo = [k for k in range(plan.n_shards) if ctx.owns_shard(k) and not _shard_done(root, k)]
    done = sum(1 for k in range(plan.n_shards) if ctx.owns_shard(k)) - len(todo)
    if done:
        logger.info("resuming: %d of this rank's shards are already recorded", done)
    bar = tqdm(
        total=sum(len(plan.shard_range(k)) for k in todo),
        desc="cache",
        unit="img",
        disable=not progress or ctx.rank != 0,
    )
    writer = _BackgroundWriter(depth=4)
    builder: ShardBuilder | None = None
    builders: list[ShardBuilder] = []
    labels: list[int] = []
    skipped: list[dict[str, Any]] = []
    batches = load_batches(model, source, plan, todo, loader_threads)
    try:
        with contextlib.closing(batches):  # stops the loader threads also when recording fails
            for batch in batches:
                if builder is None:
                    builder = ShardBuilder(root, batch.shard, plan.site_dims, plan.dtype)
                    builders = [b for b in builders if not b.committed] + [builder]
                    labels, skipped = [], []
                labels += batch.labels
                skipped += batch.skipped
                if batch.pixels is not None:
                    rows, prov = _forward_rows(model, batch, plan, source)
                    writer.submit(builder.add, rows, prov)
                if batch.last_of_shard:
                    images = plan.shard_range(batch.shard)
                    extra = {
                        "image_start": images.start,
                        "image_stop": images.stop,
                        "labels": labels,
                        "skipped": skipped,
                    }
                    writer.submit(builder.commit, extra)
                    builder = None
                bar.update(batch.n_images)
        writer.close()
    except BaseException as exc:
        writer.close(raise_error=False)
        for pending in builders:
            pending.abort()
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise StoreError(
                f"the disk holding {root} is full; nothing incomplete was kept. Free space (or choose another "
                "--out) and re-run the same command: it resumes after the last complete shard."
            ) from exc
        raise
    finally:
        bar.close()


def _forward_rows(
    model: HookedSAEViT, batch: ImageBatch, plan: RecordingPlan, source: ImageSource
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The batch's rows of every site in the storage dtype, and their (n, 2) provenance."""
    assert batch.pixels is not None  # batches without a readable image are not forwarded
    pixels = batch.pixels.to(model.device, non_blocking=True)  # pinned by the loader on CUDA
    precision = fmt.TORCH_DTYPES[plan.autocast] if plan.autocast else None
    with (
        torch.inference_mode(),
        torch.autocast(pixels.device.type, dtype=precision, enabled=precision is not None),
    ):
        _, cache = model.run_with_cache(
            pixels, names_filter=plan.sites, stop_at_layer=plan.stop_at, return_cache_object=False
        )
    token_idx = torch.as_tensor(plan.token_idx, device=pixels.device)
    rows = {}
    image_n = np.repeat(np.asarray(batch.image_idx, dtype=np.int64), len(plan.token_idx))
    for site in plan.sites:
        acts_nd = cache[site].index_select(1, token_idx).flatten(0, 1)
        rows[site] = fmt.to_storage(acts_nd, plan.dtype)
        bad_n = checks.nonfinite_rows(rows[site], plan.dtype)
        if bad_n.any():  # checked in the storage dtype: float16 overflow to Inf counts
            raise _nonfinite_error(site, acts_nd, image_n[bad_n], plan.dtype, source)
    token_n = np.tile(plan.token_idx, len(batch.image_idx))
    return rows, np.stack([image_n, token_n], axis=1).astype(fmt.PROVENANCE_DTYPE)


def _nonfinite_error(
    site: str, acts_nd: torch.Tensor, bad_images: np.ndarray, dtype: str, source: ImageSource
) -> NonFiniteError:
    images = np.unique(bad_images).tolist()
    shown = ", ".join(f"{i} ({escape_control(source.name_of(i))})" for i in images[:5]) + (
        " ..." if len(images) > 5 else ""
    )
    if bool(torch.isfinite(acts_nd).all()):
        largest = float(acts_nd.abs().max())
        why = (
            f"the backbone's values (up to {largest:.3g}) overflow {dtype} to Inf; record with --dtype float32 "
            "(or bfloat16)"
        )
    else:
        why = "the backbone produced NaN or Inf for them; check the model's weights and these images"
    return NonFiniteError(
        f"non-finite activations at {site} for {len(images)} image(s): {shown}. {why}. Nothing was sealed: the "
        "store stays incomplete (complete shards of earlier images are kept for a re-run)."
    )


def _merge(root: Path, plan: RecordingPlan) -> None:
    records = []
    for k in range(plan.n_shards):
        if not _shard_done(root, k):
            raise StoreError(
                f"cannot finish {root}: shard {k} was not recorded (a rank failed?); re-run to resume"
            )
        records.append(fmt.read_json(root / fmt.record_file(k)))
    labels = np.concatenate([np.asarray(r["labels"], dtype=np.int64) for r in records])
    has_labels = plan.settings["label_names"] is not None or bool((labels >= 0).any())
    skipped = [s for r in records for s in r["skipped"]]
    if len(skipped) == plan.n_images:
        raise StoreError(f"every one of the {plan.n_images} images was unreadable; see the warnings above")
    if skipped:
        logger.warning(
            "%d of %d images were skipped (listed in metadata.json 'skipped')", len(skipped), plan.n_images
        )
    finalize_store(
        root,
        plan.settings,
        records,
        n_images=plan.n_images,
        labels_n=labels if has_labels else None,
        skipped=skipped,
    )


class _BackgroundWriter:
    """Runs submitted calls in order on one thread; a bounded queue keeps memory flat."""

    def __init__(self, depth: int) -> None:
        self._q: queue.Queue[tuple[Callable[..., object], tuple[object, ...]] | None] = queue.Queue(
            maxsize=depth
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vsl-shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (task := self._q.get()) is not None:
            if self._error is None:
                fn, args = task
                try:
                    fn(*args)
                except BaseException as exc:
                    self._error = exc

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        """Queue ``fn(*args)``; raises the error of an earlier call, if one failed."""
        if self._error is not None:
            raise self._error
        self._q.put((fn, args))

    def close(self, raise_error: bool = True) -> None:
        """Run what is queued, stop the thread and (with ``raise_error``) raise the first error."""
        self._q.put(None)
        self._thread.join()
        if raise_error and self._error is not None:
            raise self._error
