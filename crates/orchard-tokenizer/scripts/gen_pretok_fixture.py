#!/usr/bin/env python3
"""Writes tests/data/pretok_splits.jsonl: how llama.cpp's own `unicode_regex_split` splits a set
of texts for each pre-tokenizer we implement, so that tests can hold our splitter to it.

usage: gen_pretok_fixture.py ./pretok_harness > tests/data/pretok_splits.jsonl
(build pretok_harness from scripts/pretok_harness.cpp against llama.cpp's src/, see its header)
"""
import json
import pathlib
import random
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parents[3]
texts = []
for model in ["smollm2-135m-q4_1", "gemma3-270m-q4_k_m"]:
    lines = open(root / "testdata/parity" / model / "tokens.jsonl", encoding="utf-8").readlines()
    # The hand-made cases and a sample of the book passages (cut short) keep the fixture small.
    for line in lines[:45] + lines[45::6]:
        texts.append(json.loads(line)["text"][:400])

texts += [
    "I'M HERE, YOU'RE THERE, WE'VE GONE, THEY'LL SEE, HE'D SAY, IT'S, DON'T",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'Ve 'x ' '' '''s",
    "1 12 123 1234 12345 123456 1234567 ١٢٣٤٥ ²³ ½ Ⅻ 〇 ９８７６",
    "a\r\nb\n\r\nc \n d\t\n\te \r\r\r f\u00a0\u00a0g\u3000\u3000h\u0085i\u2028j  ",
    "  leading and trailing  \t ",
    "!!! ??? ... ,,, --- ___ $$$ +++ <<< >>> === ^^^ ~~~ ||| ``` @@@ ### %%% &&& ***",
    "word...word!!word??word,,word;;word::word",
    "x\u0301y\u0308z e\u0301\u0302 \u0915\u093f \u0e01\u0e34",
    "emoji 😀😀 🇫🇷 👩🏽‍💻 ✌️ ❤️‍🔥",
    "中文，标点。混合English和123数字！",
    "\u200b\u200c\u200d\ufeff zero width",
    "tabs\t\t\tand\u000bvertical\u000cform",
    "a'b c'd e'S F'T",
    "\n", " ", "  ", "\t", "'", "1", "a", "é", "€", "\r\n\r\n",
]

rng = random.Random(1234)
pool = list("abcXYZ019 '\t\n\r.,!?-_$+<=>^~|`") + [
    "é", "ß", "Ж", "ж", "中", "あ", "한", "١", "²", "½", "\u00a0", "\u3000", "\u0085",
    "\u2028", "\u0301", "😀", "‍", "—", "…", "€", "¿", "«", "»", "\u200b", "ﬁ", "Ⅻ",
]
for _ in range(400):
    n = rng.randint(1, 40)
    texts.append("".join(rng.choice(pool) for _ in range(n)))

seen = set()
uniq = []
for t in texts:
    if t and t not in seen:
        seen.add(t)
        uniq.append(t)

pres = ["default", "gpt2", "smollm", "llama3", "qwen2"]
inp = "".join(f"{p}\t{t.encode().hex()}\n" for t in uniq for p in pres)
res = subprocess.run([sys.argv[1]], input=inp.encode(), capture_output=True, check=True)
lines = res.stdout.decode().splitlines()
assert len(lines) == len(uniq) * len(pres)
i = 0
for t in uniq:
    for p in pres:
        fields = lines[i].split("\t")
        i += 1
        assert fields[0] == p
        words = [bytes.fromhex(h).decode("utf-8") for h in fields[1:]]
        assert "".join(words) == t
        print(json.dumps({"pre": p, "text": t, "words": words}, ensure_ascii=False))
