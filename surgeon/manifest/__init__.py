"""The sorted manifest (``formats/sorted-manifest/SPEC.md``): build, store, validate, measure.

- :func:`~.stamp.stamp` ``(folder, exits=None, provenance=None, verify=None)``: write the manifest of a
  checkpoint folder (every surgeon output ends with it, see :mod:`surgeon.commands.output`);
  :func:`~.stamp.write_in_place`: the same on a model folder, crash-safely.
- :func:`~.store.read_manifest` ``(folder) -> (dict, warnings) | None``: sidecar, else the header copy;
  :func:`~.store.read_exits` / :func:`~.store.recorded_exits`: its exits, read tolerantly.
- :func:`~.check.check_checkpoint` ``(path, verify=False)``: schema, tensors, header copy, hashes.
- :func:`~.build.build_manifest` (shape arithmetic), :func:`~.verify.verification_record`.
"""

from .model import FORMAT, FORMAT_VERSION, HEADER_KEY, HEADER_LIMIT, MANIFEST_FILE, Exit, Manifest, ManifestError

__all__ = ["FORMAT", "FORMAT_VERSION", "HEADER_KEY", "HEADER_LIMIT", "MANIFEST_FILE", "Exit", "Manifest",
           "ManifestError"]
