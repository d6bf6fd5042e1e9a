"""Entry point: `python -m berth_server.model_process --config-json '<ModelLaunchConfig json>'`."""

import logging
import os
import sys

from berth_server.model_process.main import main

if __name__ == "__main__":  # vLLM spawns processes that re-import the main module
    code = main(sys.argv[1:])
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Engine threads (vLLM, torch) must not keep a finished or failed process alive.
    os._exit(code)
