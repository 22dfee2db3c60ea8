"""What the encode path needs of an Embedder and of a Reasoner, as typed seams.

`embedrl.models.embedder.Embedder` and `embedrl.models.reasoner.Reasoner` satisfy them; so can a wrapper or a
test double that implements the same methods, and a type checker then sees every boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from ..data.items import Item
    from .embedder_input import EmbedderConfig, EmbedderInput

Media = tuple["list[Image.Image]", "list[Image.Image]"]
"""An item's loaded (images, sampled video frames)."""


@runtime_checkable
class EmbedderLike(Protocol):
    config: EmbedderConfig
    emb_token_id: int
    model: torch.nn.Module

    @property
    def dim(self) -> int: ...

    def build_input(self, item: Item, tcot: Any = None, media: Media | None = None) -> EmbedderInput: ...

    def collate(self, inputs: Sequence[EmbedderInput]) -> dict[str, Any]: ...

    def embed_collated(self, batch: dict[str, Any]) -> np.ndarray: ...


@runtime_checkable
class ReasonerLike(Protocol):
    @property
    def name(self) -> str: ...

    def cache_identity(self) -> Any: ...

    def reason(
        self,
        items: Sequence[Item],
        side: str,
        target_modality: str | None = None,
        media: Sequence[Media] | None = None,
    ) -> list[str]: ...
