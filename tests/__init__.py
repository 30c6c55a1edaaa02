"""The test suite, laid out like ``src/mpma`` (``tests/data/sources`` tests ``mpma.data.sources``, ...).

Every folder is a package, so test modules are imported as ``tests.<folder>.<module>`` (pytest's
default ``prepend`` import mode puts the repository root on ``sys.path``): two folders may hold files
of the same name, and helpers are imported absolutely, e.g. ``from tests import fixtures_releases``.
"""
