"""``mpma demo --model DIR [--port P] [--host H]``: the local Gradio web page over a saved model.

:func:`register` adds the command to the ``mpma`` parser. Gradio (the ``demo`` extra) and torch are
imported inside the command, so ``mpma --help`` stays instant and works without the extra.
"""

from __future__ import annotations

import argparse
import sys

DEMO_HELP = ("a local web page (Gradio, the [demo] extra) over a saved model: VQA answers + word->patch maps, "
             "retrieval, zero-shot; binds 127.0.0.1")


def register(commands) -> None:
    """Add ``demo`` to the ``mpma`` sub-command parsers."""
    demo = commands.add_parser("demo", help=DEMO_HELP)
    demo.add_argument("--model", required=True, help="model folder, fine-tuning run folder or pre-training run folder "
                      "(anything Predictor.from_pretrained loads)")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only; "
                      "0.0.0.0 serves the network)")
    demo.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    demo.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    demo.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default: 20 MB)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Load the model, build the page, serve it until interrupted."""
    try:
        from mpma.demo.app import build_app, launch, require_gradio

        require_gradio()
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from mpma.demo.service import DemoService
    from mpma.inference import Predictor

    if args.port is not None and not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    service = DemoService(Predictor.from_pretrained(args.model, device=args.device), max_upload_mb=args.max_upload_mb)
    app = build_app(service, title=f"mpma demo: {args.model}")
    print(f"serving {args.model} ({', '.join(service.tabs)}) on http://{args.host}:{args.port or '<first free from 7860>'}"
          " (Ctrl-C stops)")
    launch(app, host=args.host, port=args.port, block=True, max_upload_mb=args.max_upload_mb)
    return 0
