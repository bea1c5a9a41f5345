"""The sorted manifest (``formats/sorted-manifest/SPEC.md``): build, store, validate, measure.

- :func:`~.stamp.stamp` ``(folder, exits=None, provenance=None, verify=None, loader=None)``: write the
  manifest of a checkpoint folder (verification records need ``loader=surgeon.load``) (every surgeon output ends with it, see :mod:`surgeon.commands.output`);
  :func:`~.stamp.write_in_place`: the same on a model folder, crash-safely.
- :func:`~.store.read_manifest` ``(folder) -> (dict, warnings) | None``: sidecar, else the header copy.
- :func:`~.resolve.resolve_checkpoint_exit` ``(checkpoint, exit) -> ResolvedExit``: checkpoint -> manifest ->
  exit, the one path (strict: a manifest that fails validation is an error); :func:`~.resolve.full_width_exits`
  / :func:`~.resolve.recorded_exits`: the exits one loaded model serves.
- :func:`~.check.check_checkpoint` ``(path, verify=False, loader=None)``: schema, tensors, header copy, hashes
  (``verify`` recomputes the verification logits with ``loader``, i.e. ``surgeon.load``).
- :func:`~.build.build_manifest` (shape arithmetic), :func:`~.verify.verification_record`.
"""

from .model import FORMAT, FORMAT_VERSION, HEADER_KEY, HEADER_LIMIT, MANIFEST_FILE, ManifestError

__all__ = ["FORMAT", "FORMAT_VERSION", "HEADER_KEY", "HEADER_LIMIT", "MANIFEST_FILE", "ManifestError"]
