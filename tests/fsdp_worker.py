"""Run ``surgeon heal|soft`` through the library under ``torchrun`` (tests/test_fsdp.py), optionally
stopping every process with an exception after optimizer step K (an interrupted run).

    torchrun --nproc_per_node 2 tests/fsdp_worker.py soft|heal OPTIONS_JSON [STOP_AFTER]
    torchrun --nproc_per_node 2 tests/fsdp_worker.py shard '{"model": DIR, "offload": true}'

``shard`` builds the sharded full-weight model as ``--fsdp`` does and prints, from the main process,
one JSON line: each FSDP unit's offload policy and where the parameters' shards and the buffers are.
"""

import json
import sys
from pathlib import Path


class Stop(Exception):
    pass


def shard(options: dict) -> int:
    from torch.distributed.fsdp import FSDPModule

    from surgeon.train.config import ModelSetup
    from surgeon.train.fsdp import load_sharded
    from surgeon.train.model import checkpoint_family, distributed_state

    state = distributed_state(cpu=True)
    setup = ModelSetup(method="full", quant="none")
    model = load_sharded(options["model"], setup, checkpoint_family(options["model"]), state.device,
                         offload=options["offload"])
    units = {name or "<root>": type(m._get_fsdp_state()._fsdp_param_group.offload_policy).__name__
             for name, m in model.named_modules() if isinstance(m, FSDPModule) and m._get_fsdp_state()._fsdp_param_group}
    report = {"units": units, "world": state.num_processes,
              "param_devices": sorted({p.to_local().device.type for p in model.parameters()}),
              "buffers": {n: [b.device.type, b.double().sum().item()] for n, b in model.named_buffers()}}
    if state.is_main_process:
        print("SHARD " + json.dumps(report, sort_keys=True), flush=True)
    return 0


def main() -> int:
    command, options = sys.argv[1], json.loads(sys.argv[2])
    if command == "shard":
        return shard(options)
    stop = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if command == "soft":
        from surgeon.commands.soft import SoftOptions as Options
        from surgeon.commands.soft import run
    else:
        from surgeon.commands.heal import HealOptions as Options
        from surgeon.commands.heal import run
    options["model"], options["output"] = Path(options["model"]), Path(options["output"])

    def progress(done, total, label):
        if stop and label.startswith("training") and done == stop:
            raise Stop

    try:
        run(Options(**options), progress=progress)
    except Stop:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
