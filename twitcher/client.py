"""twitcherctl: the admin command line (being built)."""
import sys


def main(argv=None) -> int:
    print("twitcherctl is not built yet", file=sys.stderr)
    return 1
