"""The sorted manifest (``formats/sorted-manifest/SPEC.md``): build, store, validate, measure.

- :func:`~.command.stamp` ``(folder, exits=None, provenance=None, verify=None)``: write the manifest of a
  checkpoint folder (``surgery.execute`` calls it for every output).
- :func:`~.store.read_manifest` ``(folder) -> (dict, warnings) | None``: sidecar, else the header copy.
- :func:`~.check.check_checkpoint` ``(path, verify=False)``: schema, tensors, header copy, hashes.
- :func:`~.build.build_manifest`, :func:`~.build.exit_spec`, :func:`~.measure.measure_quality`.
"""

from .model import FORMAT, FORMAT_VERSION, HEADER_KEY, HEADER_LIMIT, MANIFEST_FILE, Exit, Manifest, ManifestError

__all__ = ["FORMAT", "FORMAT_VERSION", "HEADER_KEY", "HEADER_LIMIT", "MANIFEST_FILE", "Exit", "Manifest",
           "ManifestError"]
