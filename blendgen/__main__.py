"""``python -m blendgen``: the ``blendgen`` command, where the console script is not installed."""

from cli import blendgen

blendgen(prog_name="blendgen")
