"""Benchmarks: `python bench.py SECTION ...`; the sections and their flags are bench/'s
(bench/__init__.py lists them, one module of bench/ a thing measured)."""
if __name__ == "__main__":
    from bench import main
    from processes import run_main
    run_main(main)  # a bad input (a damaged --metrics file): one line `error: ...`, exit 1
