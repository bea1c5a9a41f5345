"""Run ``surgeon heal|soft`` through the library under ``torchrun`` (tests/test_fsdp.py), optionally
stopping every process with an exception after optimizer step K (an interrupted run).

    torchrun --nproc_per_node 2 tests/fsdp_worker.py soft|heal OPTIONS_JSON [STOP_AFTER]
"""

import json
import sys
from pathlib import Path


class Stop(Exception):
    pass


def main() -> int:
    command, options = sys.argv[1], json.loads(sys.argv[2])
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
