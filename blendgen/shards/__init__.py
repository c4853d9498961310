"""The one owner of the on-disk format: HDF5 shards in a directory with a manifest (docs/format.md).

``schema`` (fields, header, codecs, checksums, records <-> samples) -> ``writer`` / ``reader``
(one shard) -> ``manifest`` (a directory's list, parts and merge) -> ``verify`` (every byte) ->
``directory`` (ShardDir, what the trainer opens) -> ``runner`` (write a sample source into a
directory: parts, workers, resume). ``inspect`` and ``stats`` show shards to people. Above the
datasets (whose header readers check stored sizes), below everything that writes or reads shards.
"""
