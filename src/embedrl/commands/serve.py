"""`embedrl serve`: OpenAI-compatible /v1/chat/completions and /v1/embeddings on one port."""

from __future__ import annotations

import argparse

from ._checks import checkpoint, device, port
from ._models import add_evidence_style_argument, apply_evidence_style


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a Reasoner (chat) and/or an Embedder (embeddings) over HTTP",
        description="Starts an OpenAI-compatible server. /v1/chat/completions runs the --reasoner checkpoint "
        "(use it as the EG-RL judge or a teacher); /v1/embeddings runs the --embedder and accepts plain strings "
        "or embedrl item objects with base64 images and a 'tcot'. Binds to 127.0.0.1 unless --host is given.",
    )
    p.add_argument("--reasoner", type=checkpoint, help="checkpoint folder for /v1/chat/completions")
    p.add_argument("--embedder", type=checkpoint, help="checkpoint folder for /v1/embeddings")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000, help="0 picks a free port")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", type=device, default="auto")
    add_evidence_style_argument(p)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..models.backbone import LoadOptions
    from ..models.embedder import Embedder
    from ..models.reasoner import TransformersBackend
    from ..serve import EmbedRLServer

    if not args.reasoner and not args.embedder:
        raise ConfigError("give --reasoner, --embedder or both")
    _check_address_free(args.host, args.port)  # before the models load, which is the slow part
    options = LoadOptions(dtype=args.dtype, device=args.device)
    generator = TransformersBackend.from_pretrained(args.reasoner, options) if args.reasoner else None
    embedder = Embedder.from_pretrained(args.embedder, options) if args.embedder else None
    if embedder is not None:
        apply_evidence_style(embedder, args)
    try:
        server = EmbedRLServer(generator, embedder, host=args.host, port=args.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"serving on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


def _check_address_free(host: str, port: int) -> None:
    """Bind the address once, as the server will (IPv4, address reuse on), and let it go again."""
    import socket

    from ..errors import ConfigError

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
