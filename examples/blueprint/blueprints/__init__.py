# Blueprint guide, "Import Management": import Blueprint once here; the modules of this
# package take it with `from . import Blueprint` (see auth.py).
from daebus import Blueprint

__all__ = ["Blueprint"]
