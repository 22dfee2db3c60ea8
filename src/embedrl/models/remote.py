"""Client for an OpenAI-compatible `/v1/embeddings` endpoint that speaks embedrl's item objects.

Used when the frozen Embedder of EG-RL runs on another machine. Media are loaded here and sent as base64
data URLs with the T-CoT; the server builds the Embedder input with the same `build_input` as local inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.items import Item
from ..data.media import load_item_media
from ..errors import BackendError
from .reasoner import api_base, image_data_url, post_json


class RemoteEmbedder:
    def __init__(
        self,
        base_url: str,
        model: str = "embedder",
        api_key: str | None = None,
        timeout: float = 300.0,
        batch_size: int = 32,
        num_frames: int = 8,
    ):
        self.base_url = api_base(base_url)
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.batch_size = batch_size
        self.num_frames = num_frames

    def _payload(self, item: Item, tcot: str | None, num_frames: int) -> dict:
        images, frames = load_item_media(item, num_frames)
        entry: dict = {
            "id": item.id,
            "text": item.text,
            "instruction": item.instruction,
            "images": [image_data_url(i) for i in images],
        }
        if item.video is not None:
            entry["frames"] = [image_data_url(f) for f in frames]
        if tcot is not None:
            entry["tcot"] = tcot
        return entry

    def embed(
        self, items: Sequence[Item], tcots: Sequence[str | None] | None = None, num_frames: int | None = None
    ) -> np.ndarray:
        """Vectors of items with their T-CoTs; videos are sampled to `num_frames` here (default: this client's
        `num_frames`) and sent as that many frames, which the server embeds as given."""
        tcots = list(tcots) if tcots is not None else [None] * len(items)
        frames = num_frames or self.num_frames
        rows: list[list[float]] = []
        url = f"{self.base_url}/embeddings"
        for start in range(0, len(items), self.batch_size):
            chunk = [
                self._payload(it, t, frames)
                for it, t in zip(
                    items[start : start + self.batch_size], tcots[start : start + self.batch_size]
                )
            ]
            reply = post_json(url, {"model": self.model, "input": chunk}, self.api_key, self.timeout)
            try:
                data = sorted(reply["data"], key=lambda d: d["index"])
                vectors = [d["embedding"] for d in data]
            except (KeyError, TypeError):
                raise BackendError(f"{url}: unexpected reply {str(reply)[:300]}") from None
            if len(vectors) != len(chunk):
                raise BackendError(f"{url}: asked for {len(chunk)} embeddings, got {len(vectors)}")
            rows.extend(vectors)
        out = np.asarray(rows, dtype=np.float32)
        if not np.isfinite(out).all() or (np.linalg.norm(out, axis=1) == 0).any():
            # Never score a rollout with a placeholder vector (the official reward returned zeros silently).
            raise BackendError(f"{url}: returned non-finite or zero vectors")
        return out
