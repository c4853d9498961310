"""``python -m trainer``: the ``trainer`` command, for launchers that take a module
(``torchrun --standalone --nproc_per_node 2 -m trainer run --shards out/ ...``)."""

from cli import trainer

trainer(prog_name="trainer")
