"""Import paths of daebus 0.0.31 (``daebus.modules.context`` and friends), kept working.

Each module re-exports the current objects under its 0.0.31 name, with no warning:
these paths are part of the compatibility promise (docs/compatibility.md).
"""
