"""Token layout of a ViT: which positions of a (batch, tokens, d_model) tensor are what.

Every supported backbone orders tokens as ``[CLS?][registers...][patches row-major]``.
``TokenLayout`` is the single source of truth for that arithmetic: prefix counts, the patch
grid, selecting token groups, and mapping a patch back to its pixel box in the model input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

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


def check_token_selection(tokens: str) -> None:
    """Raise a clear ValueError for a token selection that is not one of TOKEN_SELECTIONS."""
    if tokens not in TOKEN_SELECTIONS:
        raise ConfigError(f"unknown token selection {tokens!r}; choose one of {', '.join(TOKEN_SELECTIONS)}")
