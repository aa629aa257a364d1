import os
import sys

from vqbench.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun, once the run and the process group are done, skip interpreter teardown:
    # gloo's background threads can abort there ("terminate called without an active
    # exception", SIGABRT) after everything was written, turning a success into a failure.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
