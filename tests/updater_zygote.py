"""Fork `schoolgate update --once` runs from one process that has imported the updater once.

    python -m tests.updater_zygote CONFIG [WARM_BUNDLE]   # then one line on stdin per run

For each line read, a child is forked that calls ``appliance.cli.main(["update", "--once",
"--config", CONFIG])`` — what the console script does, minus the ~0.6 s of interpreter
start and imports, which write nothing to the state directory. Protocol on stdout: ``ready``
once, then per run the child's pid and, when it has ended, ``exit <status>`` (a negative
status: killed by that signal). WARM_BUNDLE, a bundle directory, is self-tested once first,
so that the numba kernels are loaded before the fork as they are in a long-lived process.
Used by the power-loss test to kill many runs in bounded time.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    config = sys.argv[1]
    from appliance.cli import main as cli_main
    from appliance.updates.updater import update_once  # noqa: F401  (everything update --once imports)

    if len(sys.argv) > 2:
        from signatures.bundle import open_bundle

        open_bundle(sys.argv[2]).self_test()

    print("ready", flush=True)
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)  # keep the protocol pipe clean
                os.dup2(devnull, 2)
                code = cli_main(["update", "--once", "--config", config])
            finally:
                os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("exit", os.waitstatus_to_exitcode(status), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
