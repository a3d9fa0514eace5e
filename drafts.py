"""Draft pool and the five training variants: which draft sits in which prompt.

  python drafts.py generate --model Qwen/Qwen2.5-Math-1.5B --data data/math_train.jsonl
  torchrun --nproc-per-node 8 drafts.py generate ...       # the same pool, on 8 GPUs
  python -m extras.pool import --src drafts_qwen25_math_1.5b.json    # the released pool
  python -m extras.pool stats --drafts pool.jsonl [--model M]   # the referee's table

A pool line: the problem's fields + "drafts": [{text, pred, correct_strict,
correct_quasi, length}]. build_variant() picks ONE draft per problem by the
recipe's priority chains (shared by matched and mismatched), and the mismatched
variants move exactly those drafts along one seeded derangement.
"""
import argparse
import json
import os
import random

from extras.cli import COUNT, FRACTION, NONNEGATIVE, SEED, Parser
from reward import lenient_answer, reward

# defaults work from any directory
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
VARIANTS = ("no-draft", "matched-wrong", "mismatched-wrong", "matched-correct",
            "mismatched-correct")
TEMPLATE = ("Problem: {problem}\n\nThinking: {draft}\n\n"
            "The thinking section may contain errors. "
            "Solve the math problem step by step. Write your own correct solution. "
            "Put your final answer within \\boxed{{}}.\n\nCorrect Solution:")
DRAFT_MODEL_TEMPLATE = ("Solve the following math problem step by step. "
                        "Put your final answer within \\boxed{{}}.\n\n"
                        "Problem:\n{problem}\n\nSolution:")


# ------------------------------------------------------ files: one line per mistake
def read_text(path, read):
    """read(the file open as UTF-8 text): list gives its lines. A missing file,
    a folder or bytes that are not UTF-8 are errors naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return read(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None


def load_jsonl(path, required=("id", "problem", "answer")):
    """Rows of a JSONL file (blank lines skipped), each with its line number
    (`_line`); a line that is not a JSON object, lacks a `required` field or
    holds a problem or answer that is not text is an error naming file and line."""
    rows = []
    for lineno, line in enumerate(read_text(path, list), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        missing = ["(not an object)"]
        if isinstance(row, dict):
            missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing field(s) {missing}")
        wrong = [k for k in ("problem", "answer")
                 if k in required and not isinstance(row[k], str)]
        if wrong:
            raise ValueError(f"{path}:{lineno}: field(s) {wrong} must be text")
        rows.append({**row, "_line": lineno})
    return rows


def load_json(path):
    """A whole-file JSON document, parsed from the file (its text is not held
    twice); a bad one is an error naming the file and line."""
    try:
        return read_text(path, json.load)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON at line {e.lineno} ({e.msg})") from None


def read_resumable(path):
    """Records of a JSONL file that is appended to as work is done. A torn last
    line (a crash mid-write) is removed from the file, so rerunning the same
    command continues where it stopped; a bad line before the last is damage,
    not a crash, and an error naming the line (nothing after it is thrown away)."""
    records = []
    text = read_text(path, list) if os.path.exists(path) else []
    for lineno, line in enumerate(text, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno < len(text) or line.endswith("\n"):
                raise ValueError(f"{path}:{lineno}: not valid JSON: the file is damaged "
                                 "(move it away, or remove the line, to go on)") from None
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(text[:-1])
    return records


def output_path(path, flag):
    """Refuse an output file whose name is a folder, or whose folder is a file,
    before any work is done."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: a folder, not a file")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):         # the nearest one that exists
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: {folder} is a file, not a folder")


def training_problems(rows, levels=(3, 4, 5)):
    """The recipe's universe, as the author selects it: levels 3-5, not `split`
    math500, in row order (8,888 of MATH; the two with an empty gold answer
    stay, rewarded 0 whatever the model writes). Rows without a `level` field
    (your own data) are all kept; `level: null` rows are not."""
    return [r for r in rows if ("level" not in r or r["level"] in levels)
            and r.get("split") != "math500"]


def load_pool(path):
    """A draft pool: load_jsonl's rows, each with a non-empty list of drafts
    {text, correct_strict, correct_quasi}."""
    rows = load_jsonl(path, required=("id", "problem", "answer", "drafts"))
    for r in rows:
        drafts = r["drafts"] if isinstance(r["drafts"], list) else []
        bad = [] if drafts else ["has no drafts (a non-empty list of them is needed)"]
        for k, d in enumerate(drafts):
            lacks = [f for f in ("text", "correct_strict", "correct_quasi")
                     if not isinstance(d, dict) or f not in d]
            if lacks:
                bad.append(f"draft {k} lacks {', '.join(lacks)}")
            elif not isinstance(d["text"], str):
                bad.append(f"draft {k}'s text is not text")
        if bad:
            raise ValueError(f"{path}:{r['_line']}: problem {r['id']} "
                             f"{', '.join(bad[:3])}")
    return rows


# ----------------------------------------------------------------------------- prompts
def encode_prompt(tokenizer, text):
    """Token ids of a prompt: BOS (when the tokenizer has one, even if it is not
    set to add it), then the text."""
    ids = tokenizer(text)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    return ids if bos is None or ids[:1] == [bos] else [bos] + ids


def build_prompt(problem, draft, tokenizer=None, max_prompt_tokens=3072):
    """The training/test prompt. draft None -> 'N/A'. With a tokenizer, cut only
    the draft (keep its beginning) to fit max_prompt_tokens; if problem +
    instruction alone do not fit, the draft becomes 'N/A'."""
    fill = lambda text: TEMPLATE.format(problem=problem, draft=text)
    draft = "N/A" if draft is None else draft.strip()
    # the tokens a prompt has beyond max_prompt_tokens
    over = lambda prompt: len(encode_prompt(tokenizer, prompt)) - max_prompt_tokens
    if tokenizer is None or over(fill(draft)) <= 0:
        return fill(draft)
    budget = -over(fill(""))           # the draft's tokens that problem + frame leave
    ids = tokenizer(draft, add_special_tokens=False)["input_ids"]
    # tokens can merge across the cut: shrink until the whole prompt fits
    while budget > 0:
        prompt = fill(tokenizer.decode(ids[:budget]).strip())
        excess = over(prompt)
        if excess <= 0:
            return prompt
        budget -= excess
    return fill("N/A")


# ----------------------------------------------------------------------------- variants
def select_draft(drafts, want_correct, rng):
    """(index, tier) by the recipe's priority chain; tier 1 is the preferred
    kind, tier 3 is 'any draft'."""
    # (1) strict True (correct) / quasi False (wrong); (2) the right answer,
    # but not boxed; (3) any draft
    first = lambda d: d["correct_strict"] if want_correct else not d["correct_quasi"]
    between = lambda d: d["correct_quasi"] and not d["correct_strict"]
    for tier, kind in enumerate((first, between, lambda d: True), 1):
        picks = [i for i, d in enumerate(drafts) if kind(d)]
        if picks:
            return rng.choice(picks), tier


def derangement(n, rng):
    """A seeded shuffle of range(n) repaired as the author's: each of its fixed
    points i (listed before any repair, in order) swaps with the first j != i
    with perm[j] != i and perm[i] != j."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 problems, got {n}")
    perm = list(range(n))
    rng.shuffle(perm)
    for i in [i for i in range(n) if perm[i] == i]:
        j = next((j for j in range(n) if j != i and perm[j] != i and perm[i] != j), i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def build_variant(pool, variant, seed=0):
    """One row per pool problem: id, problem, answer, draft (None for no-draft),
    draft_source and the shown draft's labels, tier and answer (draft_pred: the
    whole draft's, before any cut). Mismatched-X shows, for problem i, the draft
    matched-X selected for perm[i]. The referee's length-matched control:
    extras/pool.py's length_matched."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; "
                         f"choose one of {', '.join(VARIANTS)}")
    rows = [{"id": p["id"],
             "problem": p["problem"],
             "answer": p["answer"],
             "level": p.get("level"),
             "subject": p.get("subject"),
             "draft": None,
             "draft_source": None} for p in pool]
    if variant == "no-draft":
        return rows
    empty = [p["id"] for p in pool if not p.get("drafts")]
    if empty:
        raise ValueError(f"{len(empty)} problem(s) without drafts, e.g. {empty[:3]}")
    rng = random.Random(seed)
    picks = [select_draft(p["drafts"], variant.endswith("-correct"), rng) for p in pool]
    source = range(len(pool))                 # matched: each problem's own draft
    if variant.startswith("mismatched"):
        source = derangement(len(pool), random.Random(seed))
    for row, s in zip(rows, source):
        k, tier = picks[s]
        d = pool[s]["drafts"][k]
        pred = d["pred"] if d.get("pred") is not None else lenient_answer(d["text"])
        row.update(draft=d["text"].strip(), draft_source=pool[s]["id"], draft_index=k,
                   draft_tier=tier, draft_correct_strict=d["correct_strict"],
                   draft_correct_quasi=d["correct_quasi"], draft_pred=pred)
    return rows


# ----------------------------------------------------------------------------- commands
def grade_draft(tokenizer, tokens, gold):
    """A draft as the pool keeps it: its text, answer, grades by both graders,
    and length."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return {"text": text,
            "pred": lenient_answer(text),
            "correct_strict": reward(text, gold, strict=True) == 1.0,
            "correct_quasi": reward(text, gold, strict=False) == 1.0,
            "length": len(tokens)}


def cmd_generate(args):
    """Problem i's drafts are samples (seed, i, 0..K-1): resumed, or split over
    torchrun's processes, the same pool."""
    from extras.graphs import cuda_graphs
    from generation import generate, load_model
    from processes import distributed, gather, rounds
    rank, world = distributed(vars(args))
    output_path(args.out, "--out")
    problems = training_problems(load_jsonl(args.data), args.levels)[:args.limit]
    if not problems:
        raise ValueError(f"{args.data}: no problems at levels {args.levels}")
    done = None
    if rank == 0:
        done = {r["id"] for r in read_resumable(args.out)}
        print(f"{len(problems)} problems, {len(done)} already in {args.out}, "
              f"{world} process(es)")
    done = gather(done)[0]
    todo = [(i, r) for i, r in enumerate(problems) if r["id"] not in done]
    size = max(1, args.batch_size // args.num_drafts)
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    model, tokenizer = load_model(args.model) if rank < len(chunks) else (None, None)
    graphs = cuda_graphs(not args.no_cuda_graphs)

    def draft(chunk):
        ids = [encode_prompt(tokenizer, DRAFT_MODEL_TEMPLATE.format(problem=r["problem"]))
               for _, r in chunk]
        samples = generate(model, ids, n=args.num_drafts,
                           max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p,
                           eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id,
                           seed=args.seed, prompt_numbers=[i for i, _ in chunk],
                           batch_size=args.batch_size, graphs=graphs)
        rows = [{k: v for k, v in r.items() if k != "_line"} for _, r in chunk]
        for row, outs in zip(rows, samples):
            row["drafts"] = [grade_draft(tokenizer, o, row["answer"]) for o in outs]
        return rows
    rounds(chunks, draft, args.out,
           f"drafts, {size} problem(s) x {world} process(es) a round")


def main(argv=None):
    ap = Parser(description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser(
        "generate", help="sample and grade K drafts per problem with the draft model").flags(
        ("--model", "Qwen/Qwen2.5-Math-1.5B", "draft model: hub id, local dir or 'tiny'"),
        ("--data", os.path.join(DATA, "math_train.jsonl"), "problems JSONL (MATH train)"),
        ("--out", "pool.jsonl",
         "pool JSONL; appended to, and problems in it are skipped"),
        ("--num-drafts", 32, "drafts per problem K (recipe: 32)", COUNT),
        ("--max-new-tokens", 2560, "draft length cap (recipe: 2560)", COUNT),
        ("--temperature", 0.8, "sampling temperature (recipe: 0.8)", NONNEGATIVE),
        ("--top-p", 0.95, "nucleus top_p (recipe: 0.95)", FRACTION),
        ("--levels", [3, 4, 5], "MATH levels kept (recipe: 3 4 5)", [int]),
        ("--limit", None, "only the first N problems (smoke tests)", COUNT),
        ("--batch-size", 64, "sequences decoded together", COUNT),
        ("--no-cuda-graphs", False,
         "decode eagerly on CUDA (default: CUDA graphs, checked)"),
        ("--seed", 0, "sampling seed", SEED))
    # the pool's import and statistics: python -m extras.pool
    return cmd_generate(ap.parse_args(argv))


if __name__ == "__main__":
    from processes import run_main  # torch is imported only now
    run_main(main)
