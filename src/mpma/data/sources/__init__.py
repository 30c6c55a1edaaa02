"""Offline preparation of real datasets (``mpma data prepare`` / ``validate`` / ``stats``).

- :mod:`~mpma.data.sources.adapters`: one adapter per original public release -> canonical records;
- :mod:`~mpma.data.sources.prepare`: release -> validated manifest, rejects and (optional) shards,
  with :mod:`~mpma.data.sources.resume` keeping what a rerun into the same folder can reuse;
- :mod:`~mpma.data.sources.validate`: the record and image checks, manifest validation and stats;
- :mod:`~mpma.data.sources.published`: the record counts each release's paper gives, compared
  with every prepare run; :mod:`~mpma.data.sources.identity`: which test set a result was
  measured on;
- :mod:`~mpma.data.sources.vqa_rad`: the loader of the original VQA-RAD release (its adapter and
  the ``vqa-rad:PATH`` fine-tuning data both read it).

Nothing here runs during training: training reads the manifests and shards written here through
:mod:`mpma.data.pairs` and :mod:`mpma.data.shards`.
"""
