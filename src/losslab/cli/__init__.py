"""The ``losslab`` command (never imported by the library itself)."""
