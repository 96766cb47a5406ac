"""The contracts between stages, as typing Protocols: what ``data/`` offers the recorder and what a store
offers ``train/``, ``analysis/`` and ``benchmark/``.

A Protocol is structural: any object with these members satisfies it, so a user's own dataset or a
store-like object (a view over rows, a test double) works without inheriting from anything. The
concrete classes live in their stages (``data.sources``, ``store.reader.ActivationStore``); this module
sits at the bottom so that every stage can name the contract without importing the stage that
implements it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from vision_sae_lens.layout import Layout


@runtime_checkable
class ImageSource(Protocol):
    """What the recorder reads: ``len``, ``source[i] -> (PIL.Image, label | None)``, labels, names,
    description. ``data.open_images`` returns one for any input it takes."""

    @property
    def label_names(self) -> list[str] | None:
        """Class names, indexed by label (None when the source has no labels)."""
        ...

    @property
    def labels(self) -> Sequence[int | None] | None:
        """The label of every image, known without decoding one (None when unknown or unlabelled)."""
        ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[Image.Image, int | None]: ...

    def name_of(self, i: int) -> str:
        """A short, portable name of image ``i`` (a relative path, ``row 12``) for messages and skip lists."""
        ...

    @property
    def description(self) -> dict[str, Any]:
        """JSON-ready provenance (kind, name, split, count, ...), never an absolute path."""
        ...


@runtime_checkable
class StreamedImageSource(Protocol):
    """What an :class:`ImageSource` read in order (a stream) offers besides: random access would re-read it
    from the start. (Only ``iter_range`` is checked by ``isinstance``, so the check reads no property.)"""

    def iter_range(
        self, start: int, stop: int
    ) -> Iterator[tuple[int, tuple[Image.Image, int | None] | Exception]]:
        """``(index, (image, label))`` for ``start..stop-1``; a row that cannot be read gives ``(index, error)``."""
        ...


class RowBatch(Protocol):
    """A batch of rows with provenance (``store.Rows`` is one): ``acts`` (n, d) float32, ``image_idx`` (n,),
    ``token_idx`` (n,)."""

    @property
    def acts(self) -> torch.Tensor: ...

    @property
    def image_idx(self) -> torch.Tensor: ...

    @property
    def token_idx(self) -> torch.Tensor: ...


class ActivationStoreReader(Protocol):
    """The reading side of an activation store (``vision_sae_lens.store.ActivationStore`` is the one the
    package ships): rows of one or more sites, in (image, token) order, with their provenance."""

    @property
    def path(self) -> Any:
        """Folder of the store."""
        ...

    @property
    def metadata(self) -> dict[str, Any]:
        """The store's ``metadata.json`` (settings, dataset, preprocessing, counts, fingerprint)."""
        ...

    @property
    def fingerprint(self) -> str:
        """Content hash of the store (what a report records to name the rows it measured)."""
        ...

    @property
    def sites(self) -> list[str]:
        """Recorded site names."""
        ...

    def site_dim(self, site: str) -> int:
        """Width of the rows of ``site``."""
        ...

    @property
    def layout(self) -> Layout:
        """Token layout of the backbone the rows came from (a ``RowLayout`` for plain rows)."""
        ...

    @property
    def tokens(self) -> str:
        """Token selection recorded: ``patches``, ``cls``, ``registers`` or ``all``."""
        ...

    @property
    def n_images(self) -> int: ...

    @property
    def n_rows(self) -> int: ...

    @property
    def backbone_id(self) -> str: ...

    @property
    def dataset(self) -> dict[str, Any]:
        """Description of the image source the rows were recorded from (kind, name, split, count, ...)."""
        ...

    @property
    def label_names(self) -> list[str] | None: ...

    @property
    def labels(self) -> np.ndarray | None:
        """One label per image (-1: unlabelled), or None when the source had no labels."""
        ...

    def __len__(self) -> int: ...

    def read_rows(self, site: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start..stop-1`` of ``site`` as float32, shape (n, d)."""
        ...

    def provenance(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image_idx, token_idx)`` of rows ``start..stop-1``."""
        ...

    def image_offsets(self) -> np.ndarray:
        """``(n_images + 1,)`` row offsets: image ``i``'s rows are ``offsets[i]..offsets[i+1]-1``."""
        ...

    def gather(self, site: str, rows_n: np.ndarray) -> torch.Tensor:
        """The rows at the (sorted) indices ``rows_n`` of ``site``."""
        ...

    def ordered(
        self, site: str, batch_size: int, *, start_row: int = 0, stop_row: int | None = None
    ) -> Iterator[RowBatch]:
        """Batches of rows in store order."""
        ...

    def row_range(self, start_row: int, stop_row: int | None) -> tuple[int, int]:
        """``(start, stop)`` of a row range (``stop_row=None``: to the end), checked against the store."""
        ...

    def shuffled(
        self,
        site: str,
        batch_size: int,
        *,
        seed: int = 0,
        start_row: int = 0,
        stop_row: int | None = None,
        epochs: int = 1,
        drop_last: bool = True,
        buffer_rows: int | None = None,
        block_rows: int | None = None,
        labels: Iterable[int] | None = None,
        token_types: Iterable[str] | None = None,
        subtract_mean: bool = False,
        scale_norm: bool = False,
        device: str | torch.device | None = None,
        prefetch: int = 4,
        skip_batches: int = 0,
        exclude_images: Iterable[int] | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> Iterator[torch.Tensor]:
        """Shuffled (batch_size, d) float32 training batches of ``site`` (the options:
        ``vision_sae_lens.store.shuffle.shuffled_batches``)."""
        ...

    def statistics(
        self,
        site: str,
        *,
        start_row: int = 0,
        stop_row: int | None = None,
        max_rows: int = 262144,
        labels: Iterable[int] | None = None,
        token_types: Iterable[str] | None = None,
        subtract_mean: bool = False,
        exclude_images: Iterable[int] | None = None,
    ) -> dict[str, Any]:
        """Mean row, mean norm and scale of ``site`` over the rows ``shuffled`` would emit (for normalisation)."""
        ...
