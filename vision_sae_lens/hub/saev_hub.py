"""saev checkpoints on the Hub: the SAELens named loader, ``import_saev``, and DINOv3 manifests.

``SAE.from_pretrained(release="saev-...", sae_id=...)`` reaches :func:`saev_huggingface_loader`
through SAELens' named-loader table: it downloads ``<path>/sae.pt`` (cached by huggingface_hub,
so ``HF_HUB_OFFLINE=1`` works once warm), converts it (see :mod:`vision_sae_lens.hub.saev`) and
adds the release's vision facts to ``cfg.metadata``. ``import_saev`` writes the same conversion as
SAELens folders on disk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

from vision_sae_lens.errors import ConversionError, HubError, HubFileNotFoundError
from vision_sae_lens.fsutil import (
    building_folder,
    check_inside,
    check_name,
    check_output_folder,
    read_capped,
    seal_sae_folder,
)
from vision_sae_lens.hub.registry import VisionRelease, find_release, release_for
from vision_sae_lens.hub.saev import convert_saev_checkpoint, read_saev_checkpoint
from vision_sae_lens.layout import TokenLayout
from vision_sae_lens.metadata import VisionFacts

logger = logging.getLogger(__name__)

SAEV_FILENAME = "sae.pt"


def saev_huggingface_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """SAELens loader protocol: (cfg dict, state dict, log sparsity) of a saev checkpoint on the Hub."""
    sae = _load_from_hub(repo_id, folder_name, force_download=force_download)
    cfg = sae.cfg.to_dict()
    cfg["device"] = device
    cfg.update({k: v for k, v in (cfg_overrides or {}).items() if k != "metadata"})
    return cfg, {k: v.to(device) for k, v in sae.state_dict().items()}, None


def saev_config_from_hf(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SAELens config-getter protocol for saev checkpoints (downloads the checkpoint)."""
    return saev_huggingface_loader(repo_id, folder_name, device, force_download, cfg_overrides)[0]


def import_saev(
    path_or_repo: str | Path,
    *,
    out_dir: str | Path,
    sae_ids: list[str] | None = None,
    facts: VisionFacts | None = None,
    input_mean: torch.Tensor | str | Path | None = None,
    input_scalar: float | None = None,
    subtract_b_dec: bool | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Convert saev checkpoints to SAELens folders under ``out_dir``; returns the folders written.

    ``path_or_repo``: a ``sae.pt`` file, a directory searched for ``sae.pt`` files, a registered
    release name, or a Hub repo id (``osunlp/...``). Vision facts come from the release registry
    when the checkpoint is a registered one, else from ``facts`` (saev headers record no backbone,
    layer or token set). Each folder loads with ``SAE.load_from_disk``.

    Before anything is written, every target is checked: two sources that map to one folder name
    (``a/b/sae.pt`` and ``a__b/sae.pt``) raise :class:`~vision_sae_lens.errors.ConversionError` naming
    both, and an existing target is refused unless ``overwrite`` and it is an SAE folder of this
    package (:func:`~vision_sae_lens.fsutil.check_output_folder`). Each folder is written beside its
    target and renamed into place whole.
    """
    from vision_sae_lens.hub.saev import load_saev_checkpoint

    out_dir = Path(out_dir)
    sources = list(_resolve_sources(str(path_or_repo), sae_ids))
    targets = _check_targets(
        out_dir, [(str(name), path) for name, path, _, _ in sources], overwrite=overwrite
    )
    written = []
    for (_, path, release, entry), target in zip(sources, targets, strict=True):
        use_facts = facts or (_facts_of(release, entry) if release else None)
        mean, scalar = input_mean, input_scalar
        norm_info = (release.vision.get("saev_normalization") if release else None) or {}
        if scalar is None and norm_info.get("scalar") is not None and mean is not None:
            scalar = float(norm_info["scalar"])
        sae = load_saev_checkpoint(
            path, facts=use_facts, input_mean=mean, input_scalar=scalar, subtract_b_dec=subtract_b_dec
        )
        if norm_info and mean is None:
            _record_missing_normalization(sae, norm_info)
        with building_folder(target, kind="sae", overwrite=overwrite, what="SAE folder") as tmp:
            sae.save_model(str(tmp))
            seal_sae_folder(tmp)  # checksums.json: the folder is complete (publish requires it)
        logger.info("converted %s -> %s (%s, d_sae=%d)", path, target, sae.cfg.architecture(), sae.cfg.d_sae)
        written.append(target)
    if not written:
        raise HubError(f"no saev sae.pt found in {path_or_repo!s}")
    return written


def _check_targets(out_dir: Path, sources: list[tuple[str, Path]], *, overwrite: bool) -> list[Path]:
    """The target folder of each (name, source), after refusing unsafe names, two sources with one
    target (compared case-insensitively, as some file systems do) and targets that may not be replaced."""
    targets: list[Path] = []
    seen: dict[str, Path] = {}
    for name, source in sources:
        target = check_inside(out_dir, check_name(name, what="SAE id", allow_slash=True), what="SAE id")
        earlier = seen.setdefault(str(target).casefold(), source)
        if earlier != source:
            raise ConversionError(
                f"{earlier} and {source} would both be written to {target}; nothing was written. Rename one "
                "of the source folders, or convert them one at a time (import-saev PATH/sae.pt) into different --out."
            )
        check_output_folder(target, overwrite=overwrite, kinds=("sae",), what="SAE folder")
        targets.append(target)
    return targets


def read_saev_manifest(release_or_repo: str) -> list[dict[str, Any]]:
    """The rows of a saev multi-checkpoint repo's ``manifest.jsonl`` (run_id, layer, l0, mse, path),
    each with the ``sae_id`` to pass to ``SAE.from_pretrained``."""
    release = release_for(release_or_repo)
    repo_id = release.repo_id if release else release_or_repo
    path = _download(repo_id, "manifest.jsonl")
    rows = [json.loads(line) for line in read_capped(path).decode().splitlines() if line.strip()]
    for row in rows:
        row["sae_id"] = f"blocks.{row['layer']}.hook_resid_post/{row['run_id']}"
    return rows


# --- helpers -------------------------------------------------------------------------------------


def _load_from_hub(repo_id: str, folder_name: str, *, force_download: bool = False):
    found = find_release(repo_id, folder_name)
    release, entry = found if found else (None, None)
    filename = f"{folder_name.strip('/')}/{SAEV_FILENAME}" if folder_name.strip("/") else SAEV_FILENAME
    try:
        path = _download(repo_id, filename, force_download=force_download)
    except HubError as exc:
        if release is not None and release.manifest and isinstance(exc, HubFileNotFoundError):
            raise HubError(
                f"{exc} saev published only some runs of {release.name}; read_saev_manifest({release.name!r}) "
                "lists the sae_ids that exist."
            ) from exc
        raise
    ckpt = read_saev_checkpoint(path)
    if entry is not None and entry.get("d_in") not in (None, ckpt.d_model):
        logger.warning(
            "%s/%s: the registry says d_in=%s, the checkpoint has d_model=%d; using the checkpoint.",
            repo_id,
            filename,
            entry.get("d_in"),
            ckpt.d_model,
        )
    known = (release, entry) if release is not None and entry is not None else None
    sae = convert_saev_checkpoint(ckpt, facts=_facts_of(*known) if known else None)
    if known is not None:
        release, entry = known
        sae.cfg.metadata.release = release.name
        sae.cfg.metadata.sae_id = entry["id"]
        sae.cfg.metadata.repo_id = repo_id
        norm = release.vision.get("saev_normalization")
        if norm:
            _record_missing_normalization(sae, norm)
    return sae


def _record_missing_normalization(sae, norm_info: dict[str, Any]) -> None:
    sae.cfg.metadata.saev_input_normalization = dict(norm_info)
    logger.warning(
        "This saev SAE was trained on normalised activations x' = (x - mean) * %s; the mean is not in the "
        "repo, so the SAE expects x' as input. To get an SAE that takes raw activations, run "
        "import_saev(..., input_mean=MEAN) with saev's published mean.",
        norm_info.get("scalar"),
    )


def _facts_of(release: VisionRelease, entry: dict[str, Any]) -> VisionFacts:
    vis = release.vision
    size, patch = vis["image_size"], vis["patch_size"]
    layout = TokenLayout(
        image_size=(size, size) if isinstance(size, int) else tuple(size),
        patch_size=(patch, patch) if isinstance(patch, int) else tuple(patch),
        has_cls=bool(vis.get("has_cls", True)),
        n_registers=int(vis.get("n_registers", 0)),
    )
    dataset = vis.get("dataset")
    return VisionFacts(
        backbone=vis.get("backbone", release.model),
        hook_name=entry.get("hook_name") or entry["id"].split("/")[0],
        tokens=vis.get("tokens", "patches"),
        layout=layout,
        dataset=dataset if isinstance(dataset, dict) else {"name": dataset, "source": release.source},
    )


def _download(repo_id: str, filename: str, *, force_download: bool = False) -> str:
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename, force_download=force_download)
    except LocalEntryNotFoundError as exc:
        raise HubError(
            f"{repo_id}/{filename} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(HF_HUB_OFFLINE=1 or no network). Download it once while online, or unset HF_HUB_OFFLINE."
        ) from exc
    except EntryNotFoundError as exc:
        raise HubFileNotFoundError(f"{filename} not found in Hub repo {repo_id}.") from exc
    except RepositoryNotFoundError as exc:
        raise HubFileNotFoundError(
            f"Hub repo {repo_id} not found (or private and no token with access)."
        ) from exc


def _resolve_sources(source: str, sae_ids: list[str] | None):
    """Yield (folder name, local sae.pt path, release or None, entry or None)."""
    local = Path(source)
    if local.is_file():
        yield local.parent.name if local.name == SAEV_FILENAME else local.stem, local, None, None
        return
    if local.is_dir():
        for path in sorted(local.rglob(SAEV_FILENAME)):
            rel = path.parent.relative_to(local)
            yield (str(rel).replace("/", "__") if str(rel) != "." else local.name), path, None, None
        return
    release = release_for(source)
    if release is None:
        if "/" not in source:
            raise HubError(f"{source!r} is neither a file, a directory, a registered release nor a repo id.")
        yield "sae", Path(_download(source, SAEV_FILENAME)), None, None
        return
    entries = [release.sae(i) for i in sae_ids] if sae_ids else release.saes
    if release.manifest and not sae_ids:
        published = {row["sae_id"] for row in read_saev_manifest(release.name)}
        entries = [e for e in entries if e["id"] in published]
    for entry in entries:
        folder = str(entry.get("path", "")).strip("/")
        filename = f"{folder}/{SAEV_FILENAME}" if folder else SAEV_FILENAME
        yield entry["id"].replace("/", "__"), Path(_download(release.repo_id, filename)), release, entry
