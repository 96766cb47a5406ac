"""Publish SAELens checkpoint folders to the Hub, with a model card, in one commit.

``push_to_hub(dirs, repo_id=...)`` checks every folder before the first byte is sent (it has its
``checksums.json`` completion marker and matches it, it loads with ``SAE.load_from_disk``, its vision metadata is complete, ids are unique), then uploads
``<sae_id>/cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``, ``eval.json`` and
``names.json`` (the latent names of ``explain``, checked to name that SAE) plus a ``README.md`` model
card in a single commit (its own commit, not SAELens' ``upload_saes_to_huggingface``, which uploads
only the files SAELens loads and would drop the rest), so the repo is never half-published and
``SAE.from_pretrained(repo_id, sae_id)`` works with SAELens' default loader. Authentication is
huggingface_hub's (``token=``, ``HF_TOKEN``, ``huggingface-cli login``); the token is never logged
and is scrubbed from error messages.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vision_sae_lens.errors import HubError, NonFiniteError, SAEFolderError, UnsafePathError, escape_control
from vision_sae_lens.fsutil import check_name, read_json
from vision_sae_lens.hub.model_card import build_model_card
from vision_sae_lens.names_format import NAMES_FILE, names_problems, read_names

logger = logging.getLogger(__name__)

SAE_FILES = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "eval.json", NAMES_FILE)
REQUIRED_METADATA = ("backbone", "hook_name", "tokens", "image_size", "patch_size", "has_cls")
_SAE_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")


@dataclass
class PublishPlan:
    """What ``push_to_hub`` uploads (returned by dry runs and real runs alike)."""

    repo_id: str
    """Target repo."""
    saes: list[dict[str, Any]] = field(default_factory=list)
    """Per SAE: sae_id, source folder, site, architecture, d_in, d_sae, metrics."""
    files: list[tuple[str, str]] = field(default_factory=list)
    """(path in repo, local path or '<generated>') for every file."""
    model_card: str = ""
    """README.md text."""
    commit_url: str | None = None
    """Set after a real upload."""

    def describe(self) -> str:
        """Human-readable listing of what is (or would be) uploaded."""
        # Folder names and ids come from the user and from files: control characters are shown escaped.
        lines = [f"repo {escape_control(self.repo_id)}: {len(self.saes)} SAE(s), {len(self.files)} file(s)"]
        lines += [
            f"  {escape_control(repo_path)}  <-  {escape_control(local)}" for repo_path, local in self.files
        ]
        return "\n".join(lines)


def push_to_hub(
    dirs: list[str | Path] | str | Path,
    *,
    repo_id: str,
    sae_ids: list[str] | None = None,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    revision: str = "main",
    commit_message: str | None = None,
) -> PublishPlan:
    """Validate SAELens checkpoint folders, then upload them and a model card to ``repo_id``.

    ``sae_ids`` defaults to each SAE's ``metadata.hook_name`` (``blocks.10.hook_resid_post``),
    or the folder name when two SAEs share a site. With ``dry_run=True`` nothing is sent and the
    returned plan lists what would be uploaded.
    """
    dirs = [dirs] if isinstance(dirs, str | Path) else list(dirs)
    if not dirs:
        raise HubError("push_to_hub needs at least one checkpoint folder")
    saes = [_validate_folder(Path(d)) for d in dirs]
    ids = sae_ids or _default_ids(saes)
    if len(ids) != len(saes):
        raise HubError(f"got {len(ids)} sae_ids for {len(saes)} folders")
    _check_ids(ids)
    plan = PublishPlan(repo_id=repo_id)
    for sae_id, info in zip(ids, saes, strict=True):
        info["sae_id"] = sae_id
        plan.saes.append(info)
        for name in SAE_FILES:
            local = info["folder"] / name
            if local.exists():
                plan.files.append((f"{sae_id}/{name}", str(local)))
    plan.model_card = build_model_card(repo_id, plan.saes)
    plan.files.append(("README.md", "<generated model card>"))
    if dry_run:
        # The plan itself is the caller's to show (the CLI prints it once); the log says only what happened.
        logger.info(
            "dry run: %d file(s) of %d SAE(s) for %s, nothing uploaded",
            len(plan.files),
            len(plan.saes),
            repo_id,
        )
        return plan
    plan.commit_url = _upload(plan, private=private, token=token, revision=revision, message=commit_message)
    logger.info("published %d SAE(s) to %s", len(plan.saes), repo_id)
    return plan


def _validate_folder(folder: Path) -> dict[str, Any]:
    from vision_sae_lens.train.checkpoint import open_sae_folder
    from vision_sae_lens.train.evaluate import check_report_finite

    if not folder.is_dir():
        raise HubError(f"{folder} is not a directory; pass SAELens checkpoint folders (cfg.json + weights).")
    _refuse_links(folder)
    missing = [n for n in ("cfg.json", "sae_weights.safetensors") if not (folder / n).exists()]
    if missing:
        raise HubError(f"{folder} is not a SAELens checkpoint folder: missing {missing}.")
    try:
        # checksums.json is the completion marker: a half-written or edited folder is never published.
        sae = open_sae_folder(folder, require_checksums=True)
    except SAEFolderError as exc:
        raise HubError(f"refusing to publish: {exc}") from exc
    md = sae.cfg.metadata
    if md.get("modality") == "rows":
        raise HubError(
            f"{folder} was trained on plain rows (not image patches); vision releases hold image SAEs. "
            "Upload it with sae_lens.upload_saes_to_huggingface instead."
        )
    absent = [k for k in REQUIRED_METADATA if md.get(k) is None]
    if absent:
        raise HubError(
            f"{folder}: cfg.json metadata lacks {absent}; add them with "
            "vision_sae_lens.apply_vision_facts(sae, VisionFacts(...)) and save again."
        )
    evals = {}
    if (folder / "eval.json").exists():  # sealed: open_sae_folder checked it against checksums.json
        try:
            evals = read_json(folder / "eval.json")
        except ValueError as exc:
            raise HubError(f"{folder}/eval.json is not valid JSON: {exc}") from exc
        try:  # Python's json reads NaN / Infinity; a model card must not show them as figures
            check_report_finite(evals, source=f"{folder}/eval.json")
        except NonFiniteError as exc:
            raise HubError(f"refusing to publish: {exc}") from exc
    return {
        "folder": folder,
        "site": md.get("hook_name"),
        "backbone": md.get("backbone") or md.get("model_name"),
        "tokens": md.get("tokens"),
        "dataset": md.get("dataset"),
        "architecture": sae.cfg.architecture(),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "eval": evals,
        "names": _names_of(folder, sae),
    }


def _names_of(folder: Path, sae: Any) -> dict[str, Any] | None:
    """The folder's names.json (sealed with it) when it names this very SAE; None without one."""
    from vision_sae_lens.backbones.recorded import weights_sha256

    if not (folder / NAMES_FILE).exists():
        return None
    try:
        doc = read_names(folder / NAMES_FILE)
    except ValueError as exc:  # ConfigError: not a names file, or malformed
        raise HubError(f"refusing to publish: {exc}") from exc
    problems = names_problems(
        doc,
        hook_name=sae.cfg.metadata.hook_name,
        d_sae=int(sae.cfg.d_sae),
        weights_sha256=weights_sha256(sae),
    )
    if problems:
        raise HubError(
            f"refusing to publish {folder}: its {NAMES_FILE} does not name its SAE ({'; '.join(problems)}). Name "
            f"it again (vision-sae-lens explain {folder} --store ...) or move {NAMES_FILE} out and re-seal."
        )
    return doc


def _refuse_links(folder: Path) -> None:
    """Refuse a folder holding any symlink (file or folder) or a file to upload that resolves outside:
    the upload must be the folder's own bytes, never what a link points to (credentials, ...)."""
    base = folder.resolve()
    links = [
        Path(sub, name)
        for sub, dirs, files in os.walk(folder)
        for name in [*dirs, *files]
        if Path(sub, name).is_symlink()
    ]
    outside = [folder / n for n in SAE_FILES if not (folder / n).resolve().is_relative_to(base)]
    if links or outside:
        shown = ", ".join(str(p) for p in [*links, *outside][:5])
        raise HubError(
            f"refusing to publish {folder}: it holds symbolic links or files that resolve outside it ({shown}). "
            "Publish only the folder's own files: replace the links with copies, or publish the folder they "
            "point to."
        )


def _default_ids(saes: list[dict[str, Any]]) -> list[str]:
    sites = [s["site"] for s in saes]
    return [s["site"] if sites.count(s["site"]) == 1 else f"{s['site']}/{s['folder'].name}" for s in saes]


def _check_ids(ids: list[str]) -> None:
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise HubError(f"SAE ids must be unique in a repo; repeated: {dupes}. Pass sae_ids=[...].")
    bad = {}
    for sae_id in ids:
        try:  # first the rules of every user name (no '.', '..' or '.git' part, no control characters, ...)
            check_name(sae_id, what="SAE id", allow_slash=True)
        except UnsafePathError as exc:
            bad[sae_id] = str(exc).split("; ")[0]
            continue
        if sae_id == "README.md":
            bad[sae_id] = "'README.md' is the model card's name"
        elif not all(_SAE_ID_PART.fullmatch(part) for part in sae_id.split("/")):
            bad[sae_id] = f"SAE id {sae_id!r} has a part that does not start with a letter or digit"
    if bad:
        raise HubError(
            f"invalid SAE ids: {'; '.join(bad.values())}. Each '/'-separated part must start with a letter or digit "
            "and hold only letters, digits, '.', '_' and '-'."
        )


def _upload(
    plan: PublishPlan, *, private: bool, token: str | None, revision: str, message: str | None
) -> str:
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=local) for p, local in plan.files[:-1]]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=plan.model_card.encode()))
    secret = token or get_token()
    try:
        api.create_repo(plan.repo_id, private=private, exist_ok=True)
        info = api.create_commit(
            plan.repo_id,
            operations=ops,
            revision=revision,
            commit_message=message or f"Add {len(plan.saes)} vision SAE(s) with vision_sae_lens",
        )
    except HfHubHTTPError as exc:
        raise HubError(_scrub(f"uploading to {plan.repo_id} failed: {exc}", secret)) from None
    except OSError as exc:
        raise HubError(_scrub(f"uploading to {plan.repo_id} failed (network): {exc}", secret)) from None
    return info.commit_url


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)
