"""One module per command: its options (a frozen dataclass the CLI flags are generated from), its
result, and ``run(opts, progress)``. ``surgeon X`` is ``surgeon/cli/X.py`` (parse, call, render) over
``surgeon/commands/X.py`` (this package), over the algorithm packages, which never import upwards.

analyze · prune · extract · heal · soft · eval · manifest · sort_width · generate · inspect ·
import_gguf · demo; :mod:`.recipe` is the training skeleton heal and soft share, :mod:`.output`
the one path that writes a checkpoint (and stamps its sorted manifest).
"""
