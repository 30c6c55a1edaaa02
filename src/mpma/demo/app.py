"""The Gradio page of ``mpma demo``: one tab per thing the loaded model can do.

    from mpma.demo.app import build_app, launch
    app = build_app(DemoService(Predictor.from_pretrained("runs/vqa")))
    url = launch(app, port=7860, block=False)      # 127.0.0.1 unless host says otherwise

Tabs (each shown only when the model supports it, see :attr:`DemoService.tabs`):

- **VQA**: an image (PNG, JPEG, DICOM) and a question -> top-k answers with probabilities and the
  question's word->patch maps (the figure of ``mpma visualize alignment``). API name ``/answer``.
- **Retrieval**: a report text ranks uploaded gallery images (``/rank_images``), or an image ranks
  candidate texts, one a line (``/rank_texts``).
- **Zero-shot**: an image and label prompts -> label probabilities (``/zero_shot``).

Nothing is fetched from the network: Gradio's analytics are off (``GRADIO_ANALYTICS_ENABLED=False``
is set before Gradio is imported, and on the Blocks), share links and server-side rendering are
off, and the default theme's fonts are the ones shipped inside the gradio package. Gradio is the
``demo`` extra; without it :func:`require_gradio` raises a one-line :class:`ImportError` that
names the install command.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mpma.demo.service import IMAGE_SUFFIXES, DemoInputError, DemoService

INSTALL_HINT = 'mpma demo needs the "demo" extra: pip install -e ".[demo]" (or pip install "mpma[demo]")'
DEFAULT_HOST = "127.0.0.1"
TAB_TITLES = {"vqa": "VQA", "retrieval": "Retrieval", "zero_shot": "Zero-shot"}


def require_gradio():
    """The gradio module, imported with analytics and telemetry off.

    Raises:
        ImportError: gradio is not installed (the message names the pip install that brings it).
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio at import and by every Blocks
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gradio
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return gradio


def _on_page(gr, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its :class:`DemoInputError` shown on the page (``gr.Error``) instead of a generic failure."""

    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except DemoInputError as error:
            raise gr.Error(str(error), title="Input refused", print_exception=False) from None

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def _image_upload(gr, label: str):
    """A file input for one PNG / JPEG / DICOM image (gr.Image cannot take DICOM)."""
    return gr.File(label=label, file_count="single", file_types=list(IMAGE_SUFFIXES), type="filepath")


def _vqa_tab(gr, service: DemoService) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            image = _image_upload(gr, "image (PNG, JPEG or DICOM)")
            question = gr.Textbox(label="question", placeholder="is there a nodule in the left lung?", elem_id="vqa-question")
            top_k = gr.Slider(1, 10, value=5, step=1, label="answers shown (top-k)")
            ask = gr.Button("Answer", variant="primary", elem_id="vqa-answer")
        with gr.Column(scale=2):
            answers = gr.Label(label="top-k answers", elem_id="vqa-answers")
            word_map = gr.Image(label="word -> patch maps of the question", type="filepath", elem_id="vqa-map")
            note = gr.Markdown()
    ask.click(_on_page(gr, service.answer), [image, question, top_k], [answers, word_map, note], api_name="answer")


def _retrieval_tab(gr, service: DemoService) -> None:
    headers = ["rank", "candidate", "cosine similarity"]
    with gr.Tab("report text -> images"):
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="report text", lines=3, placeholder="small nodule in the right upper zone")
                gallery = gr.File(label="gallery images (PNG, JPEG or DICOM)", file_count="multiple",
                                  file_types=list(IMAGE_SUFFIXES), type="filepath")
                top_k = gr.Slider(1, 20, value=5, step=1, label="results shown")
                go = gr.Button("Rank images", variant="primary")
            ranked = gr.Dataframe(headers=headers, label="images, best first", interactive=False)
        go.click(_on_page(gr, service.rank_images), [text, gallery, top_k], ranked, api_name="rank_images")
    with gr.Tab("image -> report texts"):
        with gr.Row():
            with gr.Column():
                image = _image_upload(gr, "query image (PNG, JPEG or DICOM)")
                texts = gr.Textbox(label="candidate texts, one a line", lines=6)
                top_k_texts = gr.Slider(1, 20, value=5, step=1, label="results shown")
                go_texts = gr.Button("Rank texts", variant="primary")
            ranked_texts = gr.Dataframe(headers=headers, label="texts, best first", interactive=False)
        go_texts.click(_on_page(gr, service.rank_texts), [image, texts, top_k_texts], ranked_texts, api_name="rank_texts")


def _zero_shot_tab(gr, service: DemoService) -> None:
    with gr.Row():
        with gr.Column():
            image = _image_upload(gr, "image (PNG, JPEG or DICOM)")
            labels = gr.Textbox(label="labels (comma- or newline-separated)", value=service.default_labels(),
                                placeholder="nodule, effusion, normal", lines=2)
            template = gr.Textbox(label="prompt template ({label} is replaced)", value=service.default_template())
            go = gr.Button("Classify", variant="primary")
        probabilities = gr.Label(label="label probabilities")
    go.click(_on_page(gr, service.zero_shot), [image, labels, template], probabilities, api_name="zero_shot")


TAB_BUILDERS = {"vqa": _vqa_tab, "retrieval": _retrieval_tab, "zero_shot": _zero_shot_tab}


def build_app(service: DemoService, title: str = "mpma demo"):
    """The ``gr.Blocks`` page for ``service``'s model: a header, then one tab per supported capability.

    Raises:
        ImportError: gradio is missing (names the pip install).
        ValueError: the model supports none of the tabs (a backbone without an alignment head).
    """
    gr = require_gradio()
    tabs = service.tabs
    if not tabs:
        raise ValueError("this model supports no demo tab: it has no VQA head and no GLA-global alignment head "
                         "(fine-tune it for vqa, or pre-train with objectives.global_align > 0)")
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\n{service.describe()}. Research code, not a medical device.")
        with gr.Tabs():
            for name in tabs:
                with gr.Tab(TAB_TITLES[name], id=name):
                    TAB_BUILDERS[name](gr, service)
    return app


def launch(app, host: str = DEFAULT_HOST, port: int | None = None, block: bool = True, max_upload_mb: float = 20.0,
           quiet: bool = False) -> str:
    """Serve ``app`` on ``host:port`` (a free port from 7860 on when ``port`` is None); returns its URL.

    ``block=False`` returns once the server is up (tests, scripts); :meth:`close` the app to stop it.
    The server refuses bodies above ``max_upload_mb`` (a second guard after the service's own check).
    """
    require_gradio()
    # twice the service's limit: a moderately oversize file reaches DemoService.load_image, whose message
    # names the limit and the option; a huge one is cut off by the server
    app.launch(server_name=host, server_port=port, share=False, ssr_mode=False, prevent_thread_lock=not block,
               max_file_size=int(2 * max_upload_mb * 1e6), quiet=quiet, inbrowser=False, mcp_server=False)
    return app.local_url
