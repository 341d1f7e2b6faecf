"""``python -m regbench`` and the ``regbench`` script. Ctrl-C while the imports load (seconds on a
busy machine) ends in one line, like every other interruption."""

import sys


def run() -> None:
    try:
        from regbench.train import main
    except KeyboardInterrupt:
        print("regbench: interrupted while starting; nothing was run", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
