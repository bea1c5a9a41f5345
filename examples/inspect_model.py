"""Inspect a checkpoint from Python: exact parameter counts and per-layer config, no tensor loaded.

    python examples/inspect_model.py MODEL_DIR
"""

import sys

from surgeon.commands.inspect import inspect_checkpoint

report = inspect_checkpoint(sys.argv[1])
print(f"{report.architecture}: {report.num_layers} layers, {report.num_parameters:,} parameters")
for part, n in report.parameters.items():
    print(f"  {part:<10} {n:>12,}")
if report.layer_types:
    print("layer types:", ", ".join(report.layer_types))
