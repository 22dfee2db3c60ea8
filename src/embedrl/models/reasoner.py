"""The Reasoner: writes a T-CoT for a query or a candidate through a pluggable generation backend.

Backends share one small interface (`GenerationBackend.generate(conversations, settings) -> texts`):
- `TransformersBackend` — HF `generate` on a local Qwen-VL checkpoint (default; CPU or GPU);
- `VLLMBackend` — vLLM offline engine (the `gpu` extra; import-guarded, never installed on CPU machines);
- `OpenAIChatBackend` — any OpenAI-compatible `/v1/chat/completions` endpoint, so a large teacher or judge
  can run on another machine (vLLM's server, embedrl's own `serve`, a hosted API).
Conversations are chat messages whose content items are `{"type": "text", "text": …}` and
`{"type": "image", "image": PIL.Image}`; each backend converts them to what its engine takes.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from ..data.items import Item
from ..errors import BackendError, ConfigError
from ..prompts import PromptFn, item_prompt
from .backbone import LoadOptions, detect_family, load_model, load_processor
from .identity import weights_identity

log = logging.getLogger(__name__)

Conversation = list[dict]


@dataclass
class GenerationSettings:
    """Sampling settings. temperature 0 means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Generation:
    """One reply and what it cost; `finish_reason` is "length" when max_new_tokens cut it, else "stop"."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class GenerationBackend(Protocol):
    name: str

    def generate(self, conversations: Sequence[Conversation], settings: GenerationSettings) -> list[str]: ...


def conversation_images(conversation: Conversation) -> list[Image.Image]:
    return [
        c["image"]
        for m in conversation
        if isinstance(m["content"], list)
        for c in m["content"]
        if c.get("type") == "image"
    ]


# ------------------------------------------------------------------------------------------ transformers


class TransformersBackend:
    """Batched HF `generate` on a local checkpoint, left-padded so every row continues from its own end."""

    def __init__(
        self,
        model,
        processor,
        name: str = "transformers",
        batch_size: int = 8,
        path: str | Path | None = None,
    ):
        self.model = model
        self.processor = processor
        self.name = name
        self.batch_size = batch_size
        self.path = None if path is None else str(path)  # the checkpoint folder, when loaded from one

    def identity(self) -> Any:
        """What the T-CoT cache keys on: the checkpoint folder's file stamps, or for a model that only exists
        in memory (a policy being trained) a hash of its parameters."""
        return [self.name, weights_identity(self.model, self.path)]

    @classmethod
    def from_pretrained(
        cls, path: str | Path, options: LoadOptions | None = None, batch_size: int = 8
    ) -> TransformersBackend:
        family = detect_family(path)
        processor = load_processor(path, family, options)
        model = load_model(path, family, options)
        return cls(model, processor, name=f"transformers:{path}", batch_size=batch_size, path=path)

    def generate(self, conversations: Sequence[Conversation], settings: GenerationSettings) -> list[str]:
        return [g.text for g in self.generate_with_usage(conversations, settings)]

    @torch.no_grad()
    def generate_with_usage(
        self, conversations: Sequence[Conversation], settings: GenerationSettings
    ) -> list[Generation]:
        """Replies with their token counts and why each ended (what an OpenAI-style server reports)."""
        out: list[Generation] = []
        for start in range(0, len(conversations), self.batch_size):
            out.extend(self._generate_batch(conversations[start : start + self.batch_size], settings))
        return out

    def _generate_batch(
        self, conversations: Sequence[Conversation], settings: GenerationSettings
    ) -> list[Generation]:
        tokenizer = self.processor.tokenizer
        texts = [
            self.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        images = [img for c in conversations for img in conversation_images(c)]
        old_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
            if images:
                kwargs["images"] = images
            batch = self.processor(**kwargs)
        finally:
            tokenizer.padding_side = old_side
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": not settings.greedy,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if not settings.greedy:
            gen_kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        sequences = self.model.generate(**batch, **gen_kwargs)
        new_tokens = sequences[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        eos = self.model.generation_config.eos_token_id
        eos_ids = torch.tensor(
            [eos] if isinstance(eos, int) else list(eos or []),
            device=new_tokens.device,
            dtype=new_tokens.dtype,
        )
        out = []
        for row, text, prompt in zip(new_tokens, texts, batch["attention_mask"].sum(dim=1).tolist()):
            ended = torch.isin(row, eos_ids).nonzero()  # a finished row is padded after its end token
            if len(ended):
                out.append(Generation(text, int(prompt), int(ended[0]) + 1, "stop"))
            else:
                cut = row.numel() >= settings.max_new_tokens
                out.append(Generation(text, int(prompt), row.numel(), "length" if cut else "stop"))
        return out


# ------------------------------------------------------------------------------------------------ vLLM


class VLLMBackend:
    """vLLM offline engine (GPU extra). Not importable on the CPU machines: vLLM ships CUDA-only wheels.

    Usage on a GPU machine: `pip install 'embedrl[gpu]'`, then `VLLMBackend("Qwen/Qwen3-VL-8B-Instruct")`.
    Images go through vLLM's chat API as PIL objects (`image_pil` content items).
    """

    def __init__(self, model: str, max_images_per_prompt: int = 16, **engine_kwargs: Any):
        try:
            import vllm  # noqa: PLC0415
        except ImportError:
            raise ConfigError(
                "the vLLM backend needs the GPU extra: pip install 'embedrl[gpu]' (CUDA machines only)"
            ) from None
        self._vllm = vllm
        self.name = f"vllm:{model}"
        self.llm = vllm.LLM(
            model=model, limit_mm_per_prompt={"image": max_images_per_prompt}, **engine_kwargs
        )

    def generate(self, conversations: Sequence[Conversation], settings: GenerationSettings) -> list[str]:
        params = self._vllm.SamplingParams(
            max_tokens=settings.max_new_tokens,
            temperature=max(settings.temperature, 0.0),
            top_p=settings.top_p,
            seed=settings.seed,
        )
        converted = [
            [{"role": m["role"], "content": _vllm_content(m["content"])} for m in c] for c in conversations
        ]
        outputs = self.llm.chat(converted, params, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]


def _vllm_content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    return [{"type": "image_pil", "image_pil": c["image"]} if c["type"] == "image" else c for c in content]


# ------------------------------------------------------------------------------------------- HTTP (OpenAI)


def image_data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def openai_messages(conversation: Conversation) -> list[dict]:
    """Our conversation format -> OpenAI chat messages (images as base64 data URLs)."""
    messages = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
            continue
        parts = []
        for item in content:
            if item["type"] == "image":
                parts.append({"type": "image_url", "image_url": {"url": image_data_url(item["image"])}})
            else:
                parts.append({"type": "text", "text": item["text"]})
        messages.append({"role": message["role"], "content": parts})
    return messages


def post_json(url: str, payload: dict, api_key: str | None, timeout: float, retries: int = 2) -> dict:
    """POST JSON with retries on connection errors and 5xx; errors name the URL and the server's reply."""
    data = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last: Exception | None = None
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read().decode())
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:500]
            if exc.code < 500:
                raise BackendError(f"{url}: HTTP {exc.code}: {body}") from None
            last = BackendError(f"{url}: HTTP {exc.code}: {body}")
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            last = BackendError(f"{url}: cannot reach the server ({exc})")
        except json.JSONDecodeError as exc:
            raise BackendError(f"{url}: reply is not JSON ({exc})") from None
        if attempt < retries:
            time.sleep(0.5 * 2**attempt)
    assert last is not None
    raise last


def api_base(url: str) -> str:
    """'http://host:8000' or 'http://host:8000/v1/' -> 'http://host:8000/v1'."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class OpenAIChatBackend:
    """Any OpenAI-compatible chat endpoint; requests run concurrently (`max_concurrency`)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_concurrency: int = 8,
        retries: int = 2,
    ):
        self.base_url = api_base(base_url)
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.name = f"openai:{self.base_url}:{model}"

    def _one(self, conversation: Conversation, settings: GenerationSettings) -> str:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(conversation),
            "max_tokens": settings.max_new_tokens,
            "temperature": max(settings.temperature, 0.0),
            "top_p": settings.top_p,
        }
        if settings.seed is not None:
            payload["seed"] = settings.seed
        reply = post_json(
            f"{self.base_url}/chat/completions", payload, self.api_key, self.timeout, self.retries
        )
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise BackendError(
                f"{self.base_url}/chat/completions: unexpected reply {str(reply)[:300]}"
            ) from None

    def generate(self, conversations: Sequence[Conversation], settings: GenerationSettings) -> list[str]:
        if len(conversations) <= 1 or self.max_concurrency <= 1:
            return [self._one(c, settings) for c in conversations]
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(lambda c: self._one(c, settings), conversations))


# ------------------------------------------------------------------------------------------------ Reasoner


class Reasoner:
    """Builds the reasoner conversation for an item (media first, then the prompt chosen by `prompts.py`)
    and returns the raw T-CoT texts."""

    def __init__(
        self,
        backend: GenerationBackend,
        settings: GenerationSettings | None = None,
        num_frames: int = 8,
        fps: float = 2.0,
        prompt_fn: PromptFn | None = None,
    ):
        self.backend = backend
        self.settings = settings or GenerationSettings()
        # Frames sampled when `reason` is called without media; `encode()` passes media sampled with its own
        # EncodeSettings.num_frames instead, so this only serves direct calls.
        self.num_frames = num_frames
        self.fps = fps
        self.prompt_fn = prompt_fn

    @classmethod
    def from_pretrained(
        cls, path: str | Path, options: LoadOptions | None = None, batch_size: int = 8, **kwargs: Any
    ) -> Reasoner:
        return cls(TransformersBackend.from_pretrained(path, options, batch_size=batch_size), **kwargs)

    @property
    def name(self) -> str:
        return self.backend.name

    def cache_identity(self) -> Any:
        """Everything that decides the T-CoT an item gets: the backend and its weights (or endpoint and model
        name), the generation settings, and the frame sampling."""
        backend_identity = getattr(self.backend, "identity", None)
        prompt = (
            None if self.prompt_fn is None else f"{self.prompt_fn.__module__}.{self.prompt_fn.__qualname__}"
        )
        return {
            "backend": backend_identity() if callable(backend_identity) else self.backend.name,
            "settings": asdict(self.settings),
            "num_frames": self.num_frames,
            "fps": self.fps,
            "prompt": prompt,
        }

    def conversation(
        self,
        item: Item,
        side: str,
        target_modality: str | None,
        media: tuple[list[Image.Image], list[Image.Image]],
        answer: str | None = None,
    ) -> Conversation:
        images, frames = media
        text = item_prompt(
            item,
            side,
            target_modality,
            num_frames=len(frames),
            fps=self.fps,
            answer=answer,
            prompt_fn=self.prompt_fn,
        )
        content: list[dict] = [{"type": "image", "image": img} for img in images]
        content += [{"type": "image", "image": f} for f in frames]
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def reason(
        self,
        items: Sequence[Item],
        side: str,
        target_modality: str | None = None,
        media: Sequence[tuple[list[Image.Image], list[Image.Image]]] | None = None,
    ) -> list[str]:
        """Raw T-CoT text per item. `media` gives each item's loaded (images, frames)."""
        from ..data.media import load_item_media

        if media is None:
            media = [load_item_media(item, self.num_frames) for item in items]
        conversations = [self.conversation(it, side, target_modality, m) for it, m in zip(items, media)]
        return self.backend.generate(conversations, self.settings)
