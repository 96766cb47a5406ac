"""Token layout of a ViT: which positions of a (batch, tokens, d_model) tensor are what.

Every supported backbone orders tokens as ``[CLS?][registers...][patches row-major]``.
``TokenLayout`` is the single source of truth for that arithmetic: prefix counts, the patch
grid, selecting token groups, and mapping a patch back to its pixel box in the model input.

:class:`RowLayout` is the layout of rows that are not image tokens at all (SynthSAEBench samples, any
user's vectors): one row per example, one token (index 0) each, no prefix tokens and no image grid.
It answers the token questions (``n_tokens``, ``token_indices("all")``, ...) so stores, training and
evaluation work unchanged, and refuses every image question (``grid``, ``patch_size``, ...) with an
error that names the operation as needing image patches. :func:`layout_from_dict` reads either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Literal, NoReturn, get_args

import torch

from vision_sae_lens.errors import ConfigError, OutOfRangeError

TokenSelection = Literal["patches", "cls", "registers", "all"]
TOKEN_SELECTIONS: tuple[str, ...] = get_args(TokenSelection)


@dataclass(frozen=True)
class TokenLayout:
    """Positions of the CLS token, register tokens and patch tokens in a ViT's sequence."""

    image_size: tuple[int, int]
    """Model input size in pixels, (height, width)."""
    patch_size: tuple[int, int]
    """Patch size in pixels, (height, width)."""
    has_cls: bool
    """Whether token 0 is a CLS token."""
    n_registers: int = 0
    """Register tokens that follow the CLS token (DINOv2-reg, timm ``reg4`` models)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        object.__setattr__(self, "patch_size", tuple(int(v) for v in self.patch_size))
        if any(i % p for i, p in zip(self.image_size, self.patch_size, strict=True)):
            raise ConfigError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}; "
                "pass the size the model actually runs at."
            )
        if self.n_registers < 0:
            raise ConfigError(f"n_registers must be >= 0, got {self.n_registers}")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def n_prefix(self) -> int:
        """Tokens before the first patch (CLS + registers)."""
        return int(self.has_cls) + self.n_registers

    @property
    def n_patches(self) -> int:
        """Number of patch tokens."""
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        """Sequence length: prefix tokens plus patches."""
        return self.n_prefix + self.n_patches

    def token_indices(self, tokens: TokenSelection | str) -> torch.Tensor:
        """Sequence positions (int64, ascending) of a token selection."""
        check_token_selection(tokens)
        if tokens == "all":
            return torch.arange(self.n_tokens)
        if tokens == "patches":
            return torch.arange(self.n_prefix, self.n_tokens)
        if tokens == "cls":
            if not self.has_cls:
                raise ConfigError("this backbone has no CLS token; choose tokens='patches' or 'all'.")
            return torch.tensor([0])
        if self.n_registers == 0:
            raise ConfigError("this backbone has no register tokens; choose tokens='patches' or 'all'.")
        return torch.arange(int(self.has_cls), self.n_prefix)

    def select(self, acts_btd: torch.Tensor, tokens: TokenSelection | str) -> torch.Tensor:
        """The (batch, selected tokens, d) slice of a (batch, tokens, d) tensor."""
        if acts_btd.shape[1] != self.n_tokens:
            raise ConfigError(
                f"expected {self.n_tokens} tokens ({self.n_prefix} prefix + {self.n_patches} patches), "
                f"got a tensor of shape {tuple(acts_btd.shape)}"
            )
        idx = self.token_indices(tokens)
        if tokens == "all":
            return acts_btd
        if tokens == "patches":
            return acts_btd[:, self.n_prefix :]
        return acts_btd[:, idx.to(acts_btd.device)]

    def token_mask(self, tokens: TokenSelection | str) -> torch.Tensor:
        """Boolean (tokens,) mask, True where a token belongs to the selection."""
        mask = torch.zeros(self.n_tokens, dtype=torch.bool)
        mask[self.token_indices(tokens)] = True
        return mask

    def patch_box(self, patch_idx: int) -> tuple[int, int, int, int]:
        """Pixel box (left, top, right, bottom) in the model input of patch ``patch_idx``."""
        if not 0 <= patch_idx < self.n_patches:
            raise OutOfRangeError(f"patch index {patch_idx} out of range for a {self.grid} grid")
        row, col = divmod(patch_idx, self.grid[1])
        ph, pw = self.patch_size
        return (col * pw, row * ph, (col + 1) * pw, (row + 1) * ph)

    def to_dict(self) -> dict:
        """JSON-ready description (lists, not tuples), plus derived facts for readers."""
        d = asdict(self)
        d["image_size"], d["patch_size"] = list(self.image_size), list(self.patch_size)
        d.update(grid=list(self.grid), n_prefix=self.n_prefix, n_tokens=self.n_tokens)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TokenLayout:
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        return cls(
            image_size=tuple(d["image_size"]),
            patch_size=tuple(d["patch_size"]),
            has_cls=bool(d["has_cls"]),
            n_registers=int(d.get("n_registers", 0)),
        )


@dataclass(frozen=True)
class RowLayout:
    """Plain rows: every row is one example of its own, not a token of an image (no grid, no CLS).

    Stores written with it hold ``tokens="all"`` and provenance ``[example index, 0]``. Anything that
    needs an image grid (heatmaps, the feature browser's image pages, localization, splicing into a
    ViT) gets a clear :class:`~vision_sae_lens.errors.ConfigError` from the attribute it asks for.
    """

    kind: ClassVar[str] = "rows"
    has_cls: ClassVar[bool] = False
    n_registers: ClassVar[int] = 0
    n_prefix: ClassVar[int] = 0
    n_tokens: ClassVar[int] = 1

    def _no_grid(self, what: str) -> NoReturn:
        raise ConfigError(
            f"{what} needs image patches, but these are plain rows (RowLayout: one example per row, "
            "no image grid); use an image-patch store for image-level analysis."
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """Refused: plain rows have no image."""
        self._no_grid("image_size")

    @property
    def patch_size(self) -> tuple[int, int]:
        """Refused: plain rows have no patches."""
        self._no_grid("patch_size")

    @property
    def grid(self) -> tuple[int, int]:
        """Refused: plain rows have no patch grid."""
        self._no_grid("the patch grid")

    @property
    def n_patches(self) -> int:
        """Refused: plain rows have no patches."""
        self._no_grid("n_patches")

    def patch_box(self, patch_idx: int) -> tuple[int, int, int, int]:
        """Refused: plain rows have no pixel boxes."""
        self._no_grid("patch_box")

    def token_indices(self, tokens: TokenSelection | str) -> torch.Tensor:
        """``[0]`` for ``tokens="all"``; any other selection is refused (there are no patches or CLS)."""
        check_token_selection(tokens)
        if tokens != "all":
            raise ConfigError(
                f"tokens={tokens!r} selects image tokens, but these are plain rows (one example per row, "
                "no patches, CLS or registers); use tokens='all'."
            )
        return torch.tensor([0])

    def select(self, acts_btd: torch.Tensor, tokens: TokenSelection | str) -> torch.Tensor:
        """The (batch, 1, d) tensor itself (``tokens="all"`` only)."""
        self.token_indices(tokens)
        if acts_btd.dim() != 3 or acts_btd.shape[1] != 1:
            raise ConfigError(f"plain rows are (batch, 1, d), got a tensor of shape {tuple(acts_btd.shape)}")
        return acts_btd

    def token_mask(self, tokens: TokenSelection | str) -> torch.Tensor:
        """``[True]`` for ``tokens="all"``."""
        self.token_indices(tokens)
        return torch.ones(1, dtype=torch.bool)

    def to_dict(self) -> dict:
        """``{"kind": "rows", "n_prefix": 0, "n_tokens": 1}`` (the store's ``layout`` entry)."""
        return {"kind": self.kind, "n_prefix": self.n_prefix, "n_tokens": self.n_tokens}


Layout = TokenLayout | RowLayout
"""Either layout a store can hold."""


def layout_from_dict(d: dict) -> Layout:
    """Read a layout written by ``to_dict`` (an image layout has no ``kind`` key)."""
    kind = d.get("kind", "image")
    if kind == RowLayout.kind:
        return RowLayout()
    if kind != "image":
        raise ConfigError(f"unknown layout kind {kind!r}; this package reads 'image' and {RowLayout.kind!r}")
    return TokenLayout.from_dict(d)


def check_token_selection(tokens: str) -> None:
    """Raise a clear ValueError for a token selection that is not one of TOKEN_SELECTIONS."""
    if tokens not in TOKEN_SELECTIONS:
        raise ConfigError(f"unknown token selection {tokens!r}; choose one of {', '.join(TOKEN_SELECTIONS)}")
