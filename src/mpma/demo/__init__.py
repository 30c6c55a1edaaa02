"""``mpma demo``: a local Gradio web page over a saved model (VQA, retrieval, zero-shot tabs).

:mod:`mpma.demo.service` computes (no gradio); :mod:`mpma.demo.app` builds and serves the page and is
the only module that imports gradio (the ``demo`` extra), inside its functions.
"""
