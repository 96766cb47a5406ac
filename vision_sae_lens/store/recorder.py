"""``cache_activations``: run a hooked backbone over an image source and record sites to a store.

The source's images are cut into shards of ``shard_images`` consecutive images; each shard is
processed in batches that never cross a shard boundary, so a shard's bytes depend only on its images
(not on which process, or which run after a crash, records it). Three stages overlap: a loader thread
decodes and preprocesses the next batch, the main thread runs the forward (stopped after the deepest
site), and a writer thread appends rows to the shard's files and commits finished shards. A shard is
committed atomically (see :mod:`vision_sae_lens.store.writer`); re-running the same call skips
committed shards, so an interrupted run resumes, and a run with other settings is refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vision_sae_lens import fsutil
from vision_sae_lens.data.sources import open_images
from vision_sae_lens.errors import ConfigError, ImageInputError, InputTypeError, StoreError
from vision_sae_lens.store import format as fmt
from vision_sae_lens.store.distributed import DistContext, default_device, join_distributed
from vision_sae_lens.store.reader import ActivationStore
from vision_sae_lens.store.shuffle import prefetched
from vision_sae_lens.store.writer import (
    ShardBuilder,
    check_claimable,
    check_or_claim_directory,
    finalize_store,
    source_state,
)

logger = logging.getLogger(__name__)
TARGET_SHARD_ROWS = 65536


def cache_activations(
    model: Any,
    images: Any,
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
    progress: bool = True,
) -> ActivationStore:
    """Record ``sites`` of ``model`` on ``images`` into the store ``out_dir`` and return it.

    ``model``: a :class:`~vision_sae_lens.backbones.HookedSAEViT` or a backbone id (loaded with
    ``pretrained`` and ``model_kwargs``). ``images``: anything :func:`vision_sae_lens.data.open_images`
    takes. ``tokens``: patches, cls, registers or all. ``dtype``: float32, float16 or bfloat16.
    ``shard_images``: images per shard (default: about 65,536 rows per shard). ``loader_threads``: threads
    that decode and preprocess images (default: half the CPU cores, at most 8; the output does not
    depend on it, so a resumed run may use another number). Under ``torchrun`` each
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
    root = Path(out_dir)
    check_claimable(root)  # a foreign non-empty directory is refused before the model is even loaded
    if not isinstance(model, str):
        model.check_names(list(sites))  # a model at hand: a misspelled site fails before anything is written
    ctx = join_distributed()
    lock = None
    try:
        if ctx.rank == 0:  # one lock per store: a second cache run into it is refused at once
            lock = _lock(root)
        model = _load_model(model, ctx, device=device, pretrained=pretrained, model_kwargs=model_kwargs)
        model.check_names(list(sites))  # a misspelled site fails before any image is opened
        source = open_images(images, streaming=streaming, limit=limit)
        plan = _plan(model, source, list(sites), tokens, dtype, batch_size, shard_images)
        outcome = ctx.broadcast(_claim(root, plan.settings, source_state(source)) if ctx.rank == 0 else None)
        if isinstance(outcome, Exception):
            raise outcome
        if not outcome:
            threads = loader_threads or max(1, min(8, (os.cpu_count() or 2) // 2))
            _record(model, source, plan, root, ctx, loader_threads=threads, progress=progress)
            ctx.barrier()
            if ctx.rank == 0:
                _merge(root, plan)
            ctx.barrier()
        else:
            logger.info("store %s is already complete; nothing to record", root)
        return ActivationStore(root)
    finally:
        if lock is not None:
            lock.release()
        ctx.close()


@dataclass(frozen=True)
class RecordingPlan:
    """Everything derived from the arguments before recording: settings, shard ranges, stop layer."""

    settings: dict[str, Any]
    """The store settings as ``recording.json`` holds them (canonical JSON)."""
    sites: list[str]
    """Sites recorded, in order."""
    site_dims: dict[str, int]
    """Width of each site's rows."""
    tokens: str
    """Token selection (``patches``, ``cls``, ``registers``, ``all``)."""
    token_idx: np.ndarray
    """(t,) positions of the selected tokens in the full sequence."""
    dtype: str
    """Storage dtype of the shards."""
    batch_size: int
    """Images per forward pass."""
    shard_images: int
    """Images per shard (the last shard may hold fewer)."""
    n_images: int
    """Images in the source."""
    n_shards: int
    """Shards the store will hold."""
    stop_at: int | None
    """``stop_at_layer`` of the forward (None: the full model)."""
    channels: int
    """Input channels of the backbone."""


def _load_model(model: Any, ctx: DistContext, *, device, pretrained: bool, model_kwargs) -> Any:
    from vision_sae_lens.backbones import HookedSAEViT

    if isinstance(model, str):
        model = HookedSAEViT.from_pretrained(model, pretrained=pretrained, **(model_kwargs or {}))
        model.to(device or default_device(ctx))
    elif device is not None:
        model.to(device)
    if not isinstance(model, HookedSAEViT):
        raise InputTypeError(f"model must be a HookedSAEViT or a backbone id, got {type(model).__name__}")
    return model.eval()


def _plan(
    model, source, sites: list[str], tokens: str, dtype: str, batch_size: int, shard_images
) -> RecordingPlan:
    token_idx = model.layout.token_indices(tokens).numpy()
    for site in sites:
        model.check_site(site)
        fsutil.check_name(site, what="site name")  # it becomes the folder shards/<site>/
    block_only = all(s == "hook_embed" or s.startswith("blocks.") for s in sites)
    stop_at = max(1, max(model.layer_of(s) for s in sites)) if block_only else None
    # One blank image, run only as deep as the recording will, tells every site's shape; only
    # (batch, tokens, d) sites can be stored as rows.
    channels = int(model.preprocessing.get("channels", 3))
    probe = torch.zeros(1, channels, *model.layout.image_size, device=model.device)
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            probe, names_filter=sites, stop_at_layer=stop_at, return_cache_object=False
        )
    site_dims = {}
    for site in sites:
        shape = tuple(cache[site].shape)
        if len(shape) != 3 or shape[1] != model.layout.n_tokens:
            raise ConfigError(
                f"site {site!r} has shape {shape}, not (batch, {model.layout.n_tokens} tokens, d); only "
                "per-token sites can be recorded (e.g. blocks.N.hook_resid_post)."
            )
        site_dims[site] = int(shape[2])
    n_images = len(source)
    if n_images == 0:
        raise ImageInputError("the image source is empty")
    shard_images = int(
        shard_images if shard_images is not None else max(1, round(TARGET_SHARD_ROWS / len(token_idx)))
    )
    settings = {
        "backbone_id": _portable_id(model.backbone_id),
        "backbone_weights_sha256": _weights_sha256(model.backbone),
        "backbone_weights_file": getattr(getattr(model, "spec", None), "weights", None),
        "preprocessing": model.preprocessing,
        "layout": model.layout.to_dict(),
        "tokens": tokens,
        "token_indices": token_idx.tolist(),
        "sites": sites,
        "site_dims": site_dims,
        "d_model": int(model.d_model),
        "dtype": dtype,
        "dataset": source.description,
        "label_names": list(source.label_names) if source.label_names is not None else None,
        "recording": {"writer": "cache_activations", "batch_size": batch_size, "shard_images": shard_images},
    }
    settings = json.loads(fmt.canonical_json(settings))  # exactly what recording.json will hold
    n_shards = -(-n_images // shard_images)
    return RecordingPlan(
        settings=settings,
        sites=sites,
        site_dims=site_dims,
        tokens=tokens,
        token_idx=token_idx,
        dtype=dtype,
        batch_size=batch_size,
        shard_images=shard_images,
        n_images=n_images,
        n_shards=n_shards,
        stop_at=stop_at,
        channels=channels,
    )


def _lock(root: Path) -> fsutil.DirLock:
    lock = fsutil.DirLock(root, what="cache run").acquire()
    # Under the lock no other writer exists, so any temp file is a killed run's leftover.
    if fsutil.remove_stale_temps(root):
        logger.info("removed temp files left by an interrupted run in %s", root)
    return lock


def _claim(root: Path, settings: dict, source_state: str | None) -> bool | Exception:
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
    model, source, plan: RecordingPlan, root: Path, ctx: DistContext, *, loader_threads: int, progress: bool
) -> None:
    from tqdm.auto import tqdm

    todo = [k for k in range(plan.n_shards) if ctx.owns_shard(k) and not _shard_done(root, k)]
    done = sum(1 for k in range(plan.n_shards) if ctx.owns_shard(k)) - len(todo)
    if done:
        logger.info("resuming: %d of this rank's shards are already recorded", done)
    n_todo = sum(min(plan.n_images, (k + 1) * plan.shard_images) - k * plan.shard_images for k in todo)
    bar = tqdm(total=n_todo, desc="cache", unit="img", disable=not progress or ctx.rank != 0)
    writer = _BackgroundWriter(depth=4)
    builder: ShardBuilder | None = None
    builders: list[ShardBuilder] = []
    batches = _load_batches(model, source, plan, todo, loader_threads)
    try:
        with contextlib.closing(batches):  # stops the loader threads also when recording fails
            for k, batch in batches:
                if builder is None:
                    builder = ShardBuilder(root, k, plan.site_dims, plan.dtype)
                    builders = [b for b in builders if not b.committed] + [builder]
                    shard_meta: dict[str, Any] = {"labels": [], "skipped": []}
                shard_meta["labels"] += batch["labels"]
                shard_meta["skipped"] += batch["skipped"]
                if batch["pixels"] is not None:
                    rows, prov = _forward_rows(model, batch, plan)
                    writer.submit(builder.add, rows, prov)
                if batch["last_of_shard"]:
                    start = k * plan.shard_images
                    extra = {
                        "image_start": start,
                        "image_stop": min(plan.n_images, start + plan.shard_images),
                        **shard_meta,
                    }
                    writer.submit(builder.commit, extra)
                    builder = None
                bar.update(batch["n_images"])
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


def _forward_rows(model, batch: dict, plan: RecordingPlan) -> tuple[dict[str, np.ndarray], np.ndarray]:
    pixels = batch["pixels"].to(model.device)
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            pixels, names_filter=plan.sites, stop_at_layer=plan.stop_at, return_cache_object=False
        )
    token_idx = torch.as_tensor(plan.token_idx, device=pixels.device)
    rows = {}
    for site in plan.sites:
        acts_btd = cache[site].index_select(1, token_idx)
        rows[site] = fmt.to_storage(acts_btd.reshape(-1, acts_btd.shape[-1]), plan.dtype)
    image_n = np.repeat(np.asarray(batch["image_idx"], dtype=np.int64), len(plan.token_idx))
    token_n = np.tile(plan.token_idx, len(batch["image_idx"]))
    return rows, np.stack([image_n, token_n], axis=1).astype(fmt.PROVENANCE_DTYPE)


def _load_batches(
    model, source, plan: RecordingPlan, shards: list[int], threads: int
) -> Generator[tuple[int, dict], None, None]:
    """Preprocessed batches of the given shards, produced one batch ahead on a loader thread that
    decodes and preprocesses each batch's images on a pool of ``threads`` (PIL releases the GIL)."""

    def produce() -> Iterator[tuple[int, dict]]:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vsl-decode") as pool:
            for k in shards:
                start, stop = k * plan.shard_images, min(plan.n_images, (k + 1) * plan.shard_images)
                # A streaming source is read in order by the loader thread; a map-style one by the pool.
                streamed = source.iter_range(start, stop) if hasattr(source, "iter_range") else None
                for lo in range(start, stop, plan.batch_size):
                    hi = min(lo + plan.batch_size, stop)
                    items = [next(streamed) for _ in range(lo, hi)] if streamed else list(range(lo, hi))
                    loaded = list(pool.map(lambda item: _load_one(model, source, plan, item), items))
                    yield k, _prepare(source, loaded, hi == stop)

    return prefetched(produce(), depth=2)


def _load_one(model, source, plan: RecordingPlan, item: int | tuple[int, Any]) -> tuple[int, Any, int | None]:
    """``(index, pixels (1, c, h, w) | the exception that made the image unusable, label)``."""
    i, got = item if isinstance(item, tuple) else (item, None)
    if isinstance(got, Exception):  # the streaming reader could not decode this row
        return i, got, None
    try:
        img, label = source[i] if got is None else got
        # model.preprocess converts the image mode itself: one conversion for every entry point.
        return i, model.preprocess([img]).cpu(), label
    except Exception as exc:  # any failure to read or preprocess one image skips it (and is listed)
        return i, exc, None


def _prepare(source, loaded: list[tuple[int, Any, int | None]], last: bool) -> dict:
    pixels, image_idx, labels, skipped = [], [], [], []
    for i, got, label in loaded:
        if isinstance(got, Exception):
            name = source.name_of(i) if hasattr(source, "name_of") else f"image[{i}]"
            logger.warning("skipping image %d (%s): %s", i, name, got)
            skipped.append({"image_idx": i, "name": name, "error": _portable_error(got)})
            labels.append(-1)
            continue
        pixels.append(got)
        image_idx.append(i)
        labels.append(-1 if label is None else int(label))
    return {
        "pixels": torch.cat(pixels) if pixels else None,
        "image_idx": image_idx,
        "labels": labels,
        "skipped": skipped,
        "n_images": len(loaded),
        "last_of_shard": last,
    }


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
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vsl-shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (task := self._q.get()) is not None:
            if self._error is None:
                try:
                    task[0](*task[1:])
                except BaseException as exc:
                    self._error = exc

    def submit(self, fn, *args: Any) -> None:
        if self._error is not None:
            raise self._error
        self._q.put((fn, *args))

    def close(self, raise_error: bool = True) -> None:
        self._q.put(None)
        self._thread.join()
        if raise_error and self._error is not None:
            raise self._error


def _weights_sha256(module: torch.nn.Module) -> str:
    # The held backbone only (for open_clip the image tower: the text tower is never built or kept);
    # each tensor's bytes are hashed in place, without a copy.
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(memoryview(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def _portable_id(backbone_id: str) -> str:
    # A local directory id would put an absolute path into the metadata; keep only its name.
    return f"local-dir:{Path(backbone_id).name}" if os.path.isabs(backbone_id) else backbone_id


def _portable_error(exc: BaseException) -> str:
    message = re.sub(r"(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+", "", str(exc))
    return f"{type(exc).__name__}: {message}"[:300]
