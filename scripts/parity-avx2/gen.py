"""Recomputes testdata/parity's greedy continuations and top-5 logits with the llama.cpp build
that `gen` (gen.c) links, in the same JSON format (the fields the tests read).

usage: gen.py GEN MODEL REF_DIR OUT_DIR [LOGITS_FILE]
  REF_DIR's greedy.jsonl (if any) and *logits.jsonl (or only LOGITS_FILE) give the cases;
  prints, for each, how far the new outputs agree with REF_DIR's.
"""
import json
import os
import subprocess
import sys

gen, model, ref_dir, out_dir = sys.argv[1:5]
os.makedirs(out_dir, exist_ok=True)


def cases(name):
    with open(os.path.join(ref_dir, name)) as f:
        return [json.loads(line) for line in f if line.strip()]


def run(lines):
    p = subprocess.run([gen, model], input="\n".join(lines) + "\n", capture_output=True,
                       text=True, check=True)
    out = [line for line in p.stdout.splitlines() if line.strip()]
    assert len(out) == len(lines), p.stderr[-2000:]
    return out


if os.path.exists(os.path.join(ref_dir, "greedy.jsonl")):
    refs = cases("greedy.jsonl")
    outs = run(["G 48 " + " ".join(map(str, c["prompt_ids"])) for c in refs])
    with open(os.path.join(out_dir, "greedy.jsonl"), "w") as f:
        for c, o in zip(refs, outs):
            steps = [s.split(":") for s in o.split()[1:]]
            ids = [int(t) for t, _ in steps]
            same = 0
            while same < min(len(ids), len(c["completion_ids"])) and ids[same] == c["completion_ids"][same]:
                same += 1
            print(f"{c['prompt'][:40]!r}: {len(ids)} tokens, the first {same} as {ref_dir}'s")
            f.write(json.dumps({
                "prompt": c["prompt"],
                "parse_special": c["parse_special"],
                "prompt_ids": c["prompt_ids"],
                "completion_ids": ids,
                "top2_margins": [float(m) for _, m in steps],
            }) + "\n")

names = sys.argv[5:] or sorted(n for n in os.listdir(ref_dir) if n.endswith("logits.jsonl"))
for name in names:
    refs = cases(name)
    outs = run(["L " + " ".join(map(str, c["ids"])) for c in refs])
    with open(os.path.join(out_dir, name), "w") as f:
        for c, o in zip(refs, outs):
            rows = [r.split() for r in o[1:].split("|") if r.strip()]
            top5 = [[[int(t), float(v)] for t, v in (x.split(":") for x in r)] for r in rows]
            diff = max(abs(a[1] - b[1]) for ra, rb in zip(top5, c["top5"]) for a, b in zip(ra, rb))
            print(f"{name}: {len(c['ids'])} ids, largest difference of the k-th highest logits to {ref_dir}'s {diff:.4f}")
            f.write(json.dumps({"ids": c["ids"], "top5": top5}) + "\n")
