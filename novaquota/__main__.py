"""``novaquota`` / ``python -m novaquota``: the command line (``novaquota.ops.cli``).

The base install is the client alone; the command line needs the ``worker`` extra. Without it,
``--version`` still answers and every other command says what to install (exit status 2).
"""

from __future__ import annotations

import sys

from novaquota import __version__


def main() -> int:
    try:
        from novaquota.ops.cli import main as cli_main
    except ModuleNotFoundError as exc:
        if sys.argv[1:] == ["--version"]:
            print(f"novaquota {__version__}")
            return 0
        print(
            f"novaquota: the command line needs the worker extra (module {exc.name!r} is not "
            "installed): pip install 'novaquota[worker]'",
            file=sys.stderr,
        )
        return 2
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
