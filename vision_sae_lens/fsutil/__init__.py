"""File-safety primitives shared by every stage that writes to disk.

The mental model: a file or folder with its final name is complete, and this package only ever
deletes what it created itself.

- :func:`write_atomic` writes a unique temp file beside the target, fsyncs it, renames it over the
  target and fsyncs the folder: a reader (or a resume after ``kill -9``) sees the old file or the new
  one, never a torn one, and two writers never share a temp file. Temp names follow one pattern
  (:func:`temp_name`), and start-up cleanup (:func:`remove_stale_temps`) deletes only names of that
  pattern (:func:`is_own_temp`), never a user's ``notes.tmp``.
- :func:`replace_folder` moves a fully written temp folder into place (the same promise for folders);
  :func:`check_output_folder` decides beforehand whether a target may be (re)placed, and
  :func:`building_folder` does all of it for an output folder (check, lock, temp folder, marker, rename).
- :class:`DirLock` is an OS lock (``fcntl.flock``) on ``DIR/.vsl.lock`` that names its owner; the
  kernel releases it when the owner dies, so a crash never leaves a stale lock. Fixed-name state files
  are opened without following symlinks and must be regular files (:func:`open_state_file`).
- :func:`read_json` is the one way the package reads a JSON file: regular files only (no FIFO, no
  ``/dev/zero`` behind a symlink), at most :data:`MAX_JSON_BYTES`.
- :func:`mark_folder` / :func:`remove_own_folder`: folders we create carry a marker file, and
  ``--overwrite`` deletes a folder only when it carries that marker.
- :func:`check_name` / :func:`check_inside`: user-supplied names that become paths stay inside
  their parent.
- :func:`seal_sae_folder` / :func:`verify_sae_folder`: ``checksums.json`` of an SAE folder (weights,
  config, ``eval.json``, ``train_config.json``, ``split.json``, ``names.json``), written last (it doubles as the
  folder's completion marker) and checked before an SAE is used or published;
  :func:`update_seal` re-records one file that this package rewrote (``evaluate`` over ``eval.json``,
  ``explain`` over ``names.json``).

One submodule per idea (``writing``, ``reading``, ``locking``, ``folders``, ``names``, ``sealing``);
callers use the names below from ``vision_sae_lens.fsutil``.
"""

from __future__ import annotations

from vision_sae_lens.fsutil.folders import (
    MARKER_FILE,
    building_folder,
    check_output_folder,
    folder_kind,
    is_own_folder,
    mark_folder,
    remove_own_folder,
)
from vision_sae_lens.fsutil.locking import LOCK_FILE, DirLock, locked
from vision_sae_lens.fsutil.names import check_inside, check_name
from vision_sae_lens.fsutil.reading import (
    MAX_JSON_BYTES,
    open_regular,
    open_state_file,
    read_capped,
    read_json,
)
from vision_sae_lens.fsutil.sealing import (
    SAE_CHECKSUMS_FILE,
    SAE_CHECKSUMS_FORMAT,
    SAE_SEALED_FILES,
    seal_sae_folder,
    sha256_file,
    update_seal,
    verify_sae_folder,
)
from vision_sae_lens.fsutil.writing import (
    fsync_dir,
    fsync_tree,
    is_disk_full,
    is_own_temp,
    remove_stale_temps,
    replace_folder,
    temp_folder,
    temp_name,
    write_atomic,
    write_json_atomic,
)

__all__ = [
    "LOCK_FILE",
    "MARKER_FILE",
    "MAX_JSON_BYTES",
    "SAE_CHECKSUMS_FILE",
    "SAE_CHECKSUMS_FORMAT",
    "SAE_SEALED_FILES",
    "DirLock",
    "building_folder",
    "check_inside",
    "check_name",
    "check_output_folder",
    "folder_kind",
    "fsync_dir",
    "fsync_tree",
    "is_disk_full",
    "is_own_folder",
    "is_own_temp",
    "locked",
    "mark_folder",
    "open_regular",
    "open_state_file",
    "read_capped",
    "read_json",
    "remove_own_folder",
    "remove_stale_temps",
    "replace_folder",
    "seal_sae_folder",
    "sha256_file",
    "temp_folder",
    "temp_name",
    "update_seal",
    "verify_sae_folder",
    "write_atomic",
    "write_json_atomic",
]
