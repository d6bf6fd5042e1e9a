"""`make test-image`: the integration contract tests against the image, then the image's own tests.

    python -m tests.image.contract [pytest args]   (BERTH_TEST_IMAGE=berth:cpu)

Starts the image on a free port with the tiny test model mounted read-only at /opt/ml/model (as
SageMaker mounts weights), points the integration fixtures at it (BERTH_TEST_BASE_URL), runs pytest
with the given arguments, then stops the container with SIGTERM: it must exit 0 within SageMaker's
30 s (said only when it does not, so pytest's summary stays the last line).
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests.image import container

SIGTERM_GRACE_S = 30.0


def main(argv: list[str]) -> int:
    """Run the contract container, pytest against it, and a clean SIGTERM; the worst exit code wins."""
    if not container.IMAGE:
        print("contract: set BERTH_TEST_IMAGE (make test-image does)", file=sys.stderr)
        return 2
    # One server is there, so the shared fixture runs once (its engine: transformers, as the CPU image has).
    os.environ.setdefault("BERTH_TEST_ENGINES", "transformers")
    from berth_server.demo_model import RECIPES, build

    from tests.integration.conftest import EXTERNAL_SERVER_ENV, MODEL_CACHE, free_port

    tiny = build(RECIPES["tiny"], MODEL_CACHE / "tiny")
    started = time.monotonic()
    # The test-model cache is also visible at its host path, so a test that names a host model dir
    # (e.g. in a launch request) means the same files inside the container.
    running = container.run(free_port(), env=EXTERNAL_SERVER_ENV, model=tiny,
                            volumes=[f"{MODEL_CACHE}:{MODEL_CACHE}:ro"])
    try:
        running.wait_ready()
        print(f"contract: {container.IMAGE} ready at {running.base_url} in {time.monotonic() - started:.1f} s",
              flush=True)
        os.environ["BERTH_TEST_BASE_URL"] = running.base_url
        code = int(pytest.main(argv))
        running.terminate()
        stopping = time.monotonic()
        exit_code = running.wait_exit(SIGTERM_GRACE_S + 10)
        took = time.monotonic() - stopping
        if exit_code != 0 or took > SIGTERM_GRACE_S:  # silent when fine: pytest's summary stays the last line
            print(f"contract: container exited {exit_code} {took:.1f} s after SIGTERM\n{running.logs()[-6000:]}",
                  file=sys.stderr)
            code = code or 1
        return code
    finally:
        running.remove()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
