"""Import paths of daebus 0.0.31 (``daebus.modules.context`` and friends), kept working."""
