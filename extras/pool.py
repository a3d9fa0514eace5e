"""The draft pool's tools beside the method: the author's released pool converted into ours, and
the referee's table of what each variant shows.

  python -m extras.pool import --src drafts_qwen25_math_1.5b.json [--order ORDER.jsonl]
  python -m extras.pool stats --drafts pool.jsonl [--model M]
"""
import argparse
import json
import os
import statistics

from drafts import (
    VARIANTS,
    build_prompt,
    build_variant,
    encode_prompt,
    load_json,
    load_jsonl,
    load_pool,
    output_path,
)
from extras.cli import COUNT, SEED, Parser
from reward import is_equiv


def main(argv=None):
    """`import` or `stats`, by the first argument."""
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("import",
                   help="convert the author's released pool JSON into our pool JSONL").flags(
        ("--src", "drafts_qwen25_math_1.5b.json", "the author's pool, as released"),
        ("--out", "pool.jsonl", "pool JSONL to write"),
        ("--order", None, "JSONL of problems (a `problem` field a line): keep only these, in this "
         "order (a published config's order: its draft choices and pairings)"))
    sub.add_parser("stats",
                   help="per-variant tiers, wrong rates, pairing and prompt lengths").flags(
        ("--drafts", "pool.jsonl", "pool JSONL"),
        ("--model", None, "tokenizer for lengths in tokens (else characters)"),
        ("--seed", 0, "variant seed", SEED),
        ("--max-prompt-tokens", 3072, "prompt budget (recipe: 3072)", COUNT),
        ("--length-matched", False, "the length-matched control (see build_variant)"))
    args = ap.parse_args(argv)
    return {"import": cmd_import, "stats": cmd_stats}[args.cmd](args)


def cmd_import(args):
    """The author's pool (generate_drafts.py's output, released as drafts_qwen25_math_1.5b.json):
    {"meta": ..., "records": [...]}, each record a problem with its `samples`. Our pool keeps the
    records' order (or --order's); the file is parsed once and each row written as it is made, to a
    temporary file renamed into place once every record is good."""
    data = load_json(args.src)
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise ValueError(f'{args.src}: expected the author\'s {{"meta": ..., "records": [...]}}')
    output_path(args.out, "--out")
    order = problem_order(records, args.order) if args.order else range(len(records))
    try:
        with open(args.out + ".tmp", "w", encoding="utf-8") as out:
            for k in order:
                row = pool_row(records[k], f"{args.src}: record #{k}")
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    except BaseException:                       # a bad record, a full disk, ^C: nothing at --out
        os.remove(args.out + ".tmp")
        raise
    os.replace(args.out + ".tmp", args.out)
    print(f"imported {len(order)} of {len(records)} problems into {args.out}")


def pool_row(record, where):
    """One of the author's records as a line of our pool: unique_id -> id, "Level 3" -> 3 ("Level
    ?" -> None), samples -> drafts; split kept (the universe is chosen by it)."""
    p = record if isinstance(record, dict) else {}
    samples = p.get("samples") if isinstance(p.get("samples"), list) else [None]
    labels = ("text", "correct_strict", "correct_quasi")
    missing = [f for f in ("unique_id", "problem", "answer", "level", "split") if f not in p] + [
        f"samples[{i}].{f}" for i, d in enumerate(samples) for f in labels
        if not isinstance(d, dict) or f not in d]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing[:3])}")
    level = (str(p["level"]).split() or ["?"])[-1]
    drafts = [{"text": d["text"], "pred": d.get("pred"), "length": d.get("length"),
               "correct_strict": bool(d["correct_strict"]),
               "correct_quasi": bool(d["correct_quasi"])} for d in samples]
    return {"id": p["unique_id"], "problem": p["problem"], "answer": p["answer"],
            "level": int(level) if level.isdigit() else None, "subject": p.get("subject"),
            "split": p["split"], "drafts": drafts}


def problem_order(records, path):
    """The records of path's problems, in path's order: the author's --canonical-order, which
    reorders the rows to a released dataset's `problem` column (so its pairings come out)."""
    at = {}
    for k, r in enumerate(records):
        if isinstance(r, dict):
            at[r.get("problem")] = -1 if r.get("problem") in at else k          # -1: held twice
    order = {}
    for row in load_jsonl(path, required=("problem",)):
        k = at.get(row["problem"], -1)
        if k < 0 or k in order:
            raise ValueError(f"{path}:{row['_line']}: a problem the pool lacks or holds twice, "
                             "or listed twice")
        order[k] = row["_line"]
    return list(order)


def cmd_stats(args):
    pool = load_pool(args.drafts)
    from generation import load_tokenizer  # token counts need the tokenizer, not the model
    tokenizer = load_tokenizer(args.model) if args.model else None
    unit = "tokens" if tokenizer else "chars"
    print(f"{len(pool)} problems, {sum(len(p['drafts']) for p in pool)} drafts")
    print(f"{'variant':20s} {'tier1/2/3':>16s} {'shown wrong':>11s} {'shown = gold':>12s} "
          f"{'same subj':>9s} {'same lvl':>8s} prompt {unit} mean ± std")
    by_id = {p["id"]: p for p in pool}
    for variant in VARIANTS:
        rows = (length_matched if args.length_matched else build_variant)(pool, variant, args.seed)
        prompts = [build_prompt(r["problem"], r["draft"], tokenizer, args.max_prompt_tokens)
                   for r in rows]
        lengths = [len(encode_prompt(tokenizer, p)) if tokenizer else len(p) for p in prompts]
        shown = [r for r in rows if r["draft"] is not None]
        tiers = "/".join(str(sum(r.get("draft_tier") == t for r in shown)) for t in (1, 2,
                3)) if shown else "-"
        frac = lambda xs: f"{100 * sum(xs) / len(xs):.1f}%" if xs else "-"
        wrong = frac([not r["draft_correct_quasi"] for r in shown])
        # the shown draft's answer is gold
        gold = frac([is_equiv(r["draft_pred"], r["answer"]) for r in shown])
        subj = frac([by_id[r["draft_source"]].get("subject") == r["subject"] for r in shown])
        lvl = frac([by_id[r["draft_source"]].get("level") == r["level"] for r in shown])
        sd = statistics.pstdev(lengths) if len(lengths) > 1 else 0.0
        print(f"{variant:20s} {tiers:>16s} {wrong:>11s} {gold:>12s} {subj:>9s} {lvl:>8s} "
              f"{statistics.mean(lengths):.1f} ± {sd:.1f}")


def length_matched(pool, variant, seed=0):
    """The referee's control (grpo.py --length-matched): build_variant's rows, with row i of every
    draft variant showing its draft cut (beginning kept) to the shortest of the four draft
    variants' row-i drafts, in characters, so all four train on identical draft-length
    distributions and differ only in which draft is shown."""
    if variant == "no-draft":
        return build_variant(pool, variant, seed)
    shown = [build_variant(pool, v, seed) for v in VARIANTS[1:]]
    rows = shown[VARIANTS.index(variant) - 1]
    for i, row in enumerate(rows):
        target = min(len(s[i]["draft"]) for s in shown)
        while target and any(s[i]["draft"][target - 1].isspace() for s in shown):
            target -= 1  # build_prompt strips drafts: cut where no variant ends in space
        row.update(draft=row["draft"][:target], draft_chars_full=len(row["draft"]))
    return rows


if __name__ == "__main__":
    from processes import run_main
    run_main(main)
