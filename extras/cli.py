"""Command-line plumbing for the three scripts: flags as table rows, each with
the check of its range beside it, and a mistake reported as one line `error:
argument --flag: ...` (argparse's usage dump left out)."""
import argparse
import math


class Parser(argparse.ArgumentParser):
    """argparse, with flags from table rows (flag, default, help[, kind]) and a
    one-line error naming the flag."""

    def error(self, message):                  # no usage dump: `error: argument --x: ...`
        raise SystemExit(f"error: {message}")

    def flags(self, *rows):
        """kind: a checked type (COUNT, SEED, ...), a tuple of choices, or
        [type] for several values; a False default makes a switch; else a
        string."""
        for flag, default, help, *kind in rows:
            kind = kind[0] if kind else str
            how = {"type": kind}
            if default is False:                   # store_true's default: False
                how = {"action": "store_true"}
            elif isinstance(kind, tuple):
                how = {"choices": kind}
            elif isinstance(kind, list):
                how = {"type": kind[0], "nargs": "+"}
            self.add_argument(flag, default=default, help=help, **how)
        return self


def number(kind, ok, rule):
    """An argparse type: a finite `kind` (int or float) for which ok(x) holds,
    else an error saying `rule`."""
    def parse(text):
        x = kind(text)
        if not (math.isfinite(x) and ok(x)):
            raise argparse.ArgumentTypeError(f"{text}: must be {rule}")
        return x
    # argparse's message for a non-number: "invalid int value"
    parse.__name__ = kind.__name__
    return parse


COUNT = number(int, lambda x: x >= 1, ">= 1")
SEED = number(int, lambda x: x >= 0, ">= 0")
# grpo --num-generations: an advantage is a reward minus its group's mean,
# 0 in a group of one
GROUP = number(int, lambda x: x >= 2,
               ">= 2 (advantages are relative to a group: G = 1 learns nothing)")
POSITIVE = number(float, lambda x: x > 0, "> 0")
NONNEGATIVE = number(float, lambda x: x >= 0, ">= 0")
FRACTION = number(float, lambda x: 0 < x <= 1, "in (0, 1]")
UNIT = number(float, lambda x: 0 <= x < 1, "in [0, 1)")


def counts(text):
    """An argparse type: comma-separated COUNTs (1,2,4,8) -> their sorted set."""
    return sorted({COUNT(k) for k in text.split(",")})
