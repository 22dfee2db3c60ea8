"""`embedrl serve`: OpenAI-compatible /v1/embeddings, /v1/chat/completions and /v1/search on one port."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from ._checks import checkpoint, device, non_negative_float, port, positive_float, positive_int
from ._models import add_evidence_style_argument, apply_evidence_style

HELP = """\
Starts an OpenAI-compatible server (Starlette on uvicorn).

  /v1/embeddings        the --embedder: plain strings, or embedrl item objects with base64 images, frames and a
                        'tcot'; "reasoning": "generate" lets the --reasoner write the T-CoTs first
  /v1/chat/completions  the --reasoner (the EG-RL judge, a teacher, or a Reasoner for other clients)
  /v1/search            the --index (an `embedrl index build` folder): ranked ids with the evidence of each
  /health, /v1/models, /openapi.json

Concurrent embedding requests are gathered into shared model batches (--max-batch items, waiting at most
--max-wait-ms). Every input has a limit: a body over --max-body-bytes gets 413, any other limit a 400 that
names the field and the flag. Binds to 127.0.0.1 unless --host is given; with --api-key (or EMBEDRL_API_KEY)
every route except /health and /openapi.json needs 'Authorization: Bearer KEY'. SIGTERM or Ctrl-C stops
accepting connections and finishes the requests in flight (--timeout-graceful-shutdown). See docs/serving.md.

examples:
  embedrl serve --embedder ckpt/embedder --reasoner ckpt/reasoner --port 8000
  embedrl serve --index my-index --max-batch 64 --api-key "$KEY"
"""

# (flag help) for each ServeSettings field: the defaults come from ServeSettings itself.
LIMIT_HELP = {
    "max_body_bytes": "request body size in bytes; larger bodies get 413",
    "max_items": "inputs per embeddings request, messages per chat request",
    "max_text_chars": "characters per text, instruction or message part",
    "max_images": "images per item (and per chat request)",
    "max_frames": "video frames per item",
    "max_image_pixels": "width x height per image, read from its header before decoding",
    "max_request_pixels": "pixels of all images of one request together",
    "max_tcot_chars": "characters per T-CoT sent by the client",
    "max_boxes": "bbox_2d boxes per T-CoT sent by the client",
    "max_k": "hits per /v1/search request",
    "max_batch": "items per model batch, gathered across concurrent requests (1: one request at a time)",
    "max_wait_ms": "how long a batch waits for more requests to join it, in milliseconds",
    "max_queue": "items accepted but not yet answered; beyond it, 503 with Retry-After",
    "request_timeout": "seconds from a complete request body to the reply; beyond it, 504",
    "body_timeout": "seconds for a request body to arrive; beyond it, 408 and the connection is closed",
    "header_timeout": "seconds for the request line and headers to arrive; beyond it, the connection is closed",
    "timeout_keep_alive": "seconds an idle keep-alive connection stays open",
    "max_header_bytes": "bytes of request line plus headers (h11's incomplete event size)",
    "max_connections": "open connections plus running requests; beyond it, 503",
    "backlog": "listen backlog (connections waiting to be accepted)",
    "timeout_graceful_shutdown": "seconds to finish in-flight requests after SIGTERM / Ctrl-C",
}


def register(sub: argparse._SubParsersAction) -> None:
    from ..serve import ServeSettings

    p = sub.add_parser(
        "serve",
        help="serve an Embedder (embeddings, search) and/or a Reasoner (chat) over HTTP",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--reasoner",
        type=checkpoint,
        help="checkpoint folder for /v1/chat/completions (and T-CoTs for "
        'embeddings with "reasoning": "generate")',
    )
    p.add_argument(
        "--embedder",
        type=checkpoint,
        help="checkpoint folder for /v1/embeddings (default with --index: the index's Embedder)",
    )
    p.add_argument("--index", metavar="INDEX", help="an `embedrl index build` folder to serve on /v1/search")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=port, default=8000, help="0 picks a free port (printed at start)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("EMBEDRL_API_KEY"),
        help="require 'Authorization: Bearer KEY' (default: $EMBEDRL_API_KEY; none: no auth)",
    )
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", type=device, default="auto")
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=512,
        help="T-CoT length for embeddings with reasoning (chat requests set their own max_tokens)",
    )
    p.add_argument(
        "--reasoning",
        choices=["off", "generate"],
        default="off",
        help="default of /v1/embeddings requests that do not say (default off: embed as given, "
        "with the request's 'tcot' when it has one)",
    )
    add_evidence_style_argument(p)
    defaults = ServeSettings()
    group = p.add_argument_group("limits, batching and timeouts (docs/serving.md)")
    for spec in fields(ServeSettings):
        if spec.name == "reasoning":
            continue
        value = getattr(defaults, spec.name)
        kind = positive_int if isinstance(value, int) else positive_float
        if spec.name == "max_wait_ms":
            kind = non_negative_float
        seconds = "timeout" in spec.name
        group.add_argument(
            "--" + spec.name.replace("_", "-"),
            type=kind,
            default=value,
            metavar="SECONDS" if seconds else ("MS" if spec.name == "max_wait_ms" else "N"),
            help=f"{LIMIT_HELP[spec.name]} (default {value:g})"
            if isinstance(value, float)
            else f"{LIMIT_HELP[spec.name]} (default {value:,})",
        )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..models.backbone import LoadOptions
    from ..models.embedder import Embedder
    from ..models.reasoner import GenerationSettings, Reasoner, TransformersBackend
    from ..serve import EmbedRLServer, ServeSettings, bind_socket

    if not args.reasoner and not args.embedder and not args.index:
        raise ConfigError("give --embedder, --reasoner, --index, or several")
    if args.reasoning == "generate" and not args.reasoner:
        raise ConfigError("--reasoning generate needs --reasoner")
    index = None
    if args.index:
        from ..index import Index

        index = Index.load(args.index)
        recorded = index.manifest.get("models") or {}
        if not args.embedder:
            args.embedder = recorded.get("embedder") or index.manifest["embedder"]["path"]
            if args.evidence_style is None:
                args.evidence_style = recorded.get("evidence_style")
        if not args.reasoner and index.manifest.get("reasoning") == "generate" and recorded.get("reasoner"):
            # queries get T-CoTs from the Reasoner the corpus got them from (it also answers chat)
            args.reasoner = recorded["reasoner"]
    settings = ServeSettings(**{f.name: getattr(args, f.name) for f in fields(ServeSettings)})
    try:  # before the models load, which is the slow part
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    try:
        options = LoadOptions(dtype=args.dtype, device=args.device)
        generator = TransformersBackend.from_pretrained(args.reasoner, options) if args.reasoner else None
        embedder = Embedder.from_pretrained(args.embedder, options) if args.embedder else None
        reasoner = None
        if embedder is not None:
            apply_evidence_style(embedder, args)
            if generator is not None:
                reasoner = Reasoner(
                    generator,
                    GenerationSettings(max_new_tokens=args.max_new_tokens),
                    num_frames=embedder.config.num_frames,
                )
        if index is not None:
            index.check_embedder(embedder)
        server = EmbedRLServer(
            generator,
            embedder,
            reasoner=reasoner,
            index=index,
            settings=settings,
            api_key=args.api_key,
            sock=sock,
        )
    except BaseException:
        sock.close()
        raise
    print(f"serving on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # a second Ctrl-C during the graceful shutdown
        pass
    finally:
        sock.close()
    return 0
