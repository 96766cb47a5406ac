"""One error hierarchy for the package.

Every error derives from :class:`VisionSAELensError` and also from the builtin a caller would
naturally catch (``KeyError`` for unknown names, ``ValueError`` for bad values, ...), so both
``except VisionSAELensError`` and ``except ValueError`` work. Messages say what failed, what
exists, and how to fix it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

# C0 and C1 controls (ESC, CR, LF, BEL, ...), DEL, Unicode line/paragraph separators and the bidi
# overrides/isolates that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_control(text: object) -> str:
    """``str(text)`` with every control character written as a ``repr``-style escape (``\\x1b``, ``\\n``).

    File names, site names, SAE ids and folder names come from users and from files; written raw to a
    terminal or log, an ANSI escape recolours or hides text and a newline forges a log line. Apply it
    to any such name before it reaches a log line; every package error message goes through it.
    """
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


class VisionSAELensError(Exception):
    """Base class of every error raised by vision_sae_lens."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes; keep messages readable. Names inside a message
        # may come from files (image names, folder names): never let them drive the terminal.
        return escape_control(self.args[0]) if self.args else ""


class ConfigError(VisionSAELensError, ValueError):
    """A setting, flag or config-file value that is invalid (d_sae 0, k > d_sae, an unknown option, ...)."""


class InputTypeError(VisionSAELensError, TypeError):
    """An argument of the wrong kind (a model that is not a HookedSAEViT, an index that is not an int)."""


class OutOfRangeError(VisionSAELensError, IndexError):
    """An index past the end (an image, a latent, a patch); an IndexError, so iteration protocols hold."""


class DataFileNotFoundError(VisionSAELensError, FileNotFoundError):
    """A file the package needs that is missing (a weights file, a shipped asset)."""


class UnknownBackboneError(VisionSAELensError, KeyError):
    """A backbone id that no registry entry or library understands."""


class UnknownSiteError(VisionSAELensError, KeyError):
    """A hook name (site) that the model does not have."""


class SiteDisabledError(VisionSAELensError, AssertionError):
    """A site whose ``set_use_*`` toggle is off (TransformerLens' ``check_hooks_to_add`` asserts the same)."""


class ImageInputError(VisionSAELensError, ValueError):
    """Images that cannot be turned into the backbone's input."""


class BackboneWeightsError(VisionSAELensError, ValueError):
    """A backbone rebuilt for a store whose weights are not the recorded ones (or that cannot be rebuilt)."""


class NonFiniteError(VisionSAELensError, ValueError):
    """NaN or Inf where numbers must be finite: recorded activations, store rows, SAE latents, metrics."""


class SAEMismatchError(VisionSAELensError, ValueError):
    """An SAE that does not fit the model or store it is used with (d_in, site, tokens)."""


class StoreError(VisionSAELensError, RuntimeError):
    """An activation store that cannot be written or read."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """A path that holds no activation store (no metadata.json, or not a directory)."""


class StoreCorruptError(StoreError):
    """A shard whose checksum, size or count does not match the manifest."""


class StoreMismatchError(StoreError, ValueError):
    """Re-recording into a store directory with different settings."""


class TrainingError(VisionSAELensError, RuntimeError):
    """Training that cannot start or had to stop (bad config, NaN loss, ...)."""


class RankFailedError(TrainingError):
    """Another rank of a ``torchrun`` training job failed, died or stopped answering; this one stopped too."""


class CheckpointCorruptError(TrainingError):
    """A training checkpoint whose files are missing, unreadable or do not match its checksums."""


class HubError(VisionSAELensError, RuntimeError):
    """Publishing to or loading from the Hugging Face Hub failed."""


class HubFileNotFoundError(HubError, FileNotFoundError):
    """A file or repo that the Hub (or the local Hub cache, offline) does not have."""


class ReleaseNotFoundError(HubError, KeyError):
    """A vision release name, or an SAE id within a release, that the registry does not know."""


class ConversionError(VisionSAELensError, ValueError):
    """A foreign checkpoint (saev, ViT-Prisma) that cannot be interpreted."""


class UnsafeCheckpointError(VisionSAELensError, ValueError):
    """A checkpoint that would execute code on load (a pickle) without an explicit opt-in."""


class OutputLockedError(VisionSAELensError, RuntimeError):
    """Another process is writing into the same output folder (its lock names it)."""


class UnsafePathError(VisionSAELensError, ValueError):
    """A user-supplied name or path that would escape its folder, or a folder we did not create."""


class OutputExistsError(VisionSAELensError, FileExistsError):
    """An output folder that already holds an earlier result of this package (pass ``--overwrite``)."""


class SAEFolderError(VisionSAELensError, ValueError):
    """An SAE folder that is incomplete or cannot be read (a missing or corrupt cfg.json, ...)."""


class SAEFolderNotFoundError(SAEFolderError, FileNotFoundError):
    """A path that holds no SAE folder (no cfg.json)."""


class SAEFolderCorruptError(SAEFolderError):
    """An SAE folder whose files do not match its checksums.json."""


class CompatError(VisionSAELensError, RuntimeError):
    """A SAELens / TransformerLens seam this package relies on has changed (``vision_sae_lens.compat`` names it)."""


class BackboneMismatchWarning(UserWarning):
    """An SAE whose metadata names another backbone than the one it is spliced into."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """A ``did you mean ...`` fragment for an error message (empty when nothing is close)."""
    matches = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""
