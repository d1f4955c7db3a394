import json, re, sys, difflib
def load(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    assert raw.endswith("\n") and "\r" not in raw
    for i, line in enumerate(raw.split("\n")[:-1], 1):
        o = json.loads(line)
        assert set(o) == {"prompt", "chosen", "rejected"}, (path, i, o.keys())
        assert all(isinstance(o[k], str) and o[k].strip() == o[k] and o[k] for k in o), (path, i)
        rows.append(o)
    return rows
wc = lambda s: len(s.split())
norm = lambda s: re.sub(r"[^a-z0-9 ]", "", s.lower()).strip()
errs = []
def check(rows, name):
    seen = set()
    for i, o in enumerate(rows, 1):
        p, c, r = o["prompt"], o["chosen"], o["rejected"]
        if not 4 <= wc(p) <= 25: errs.append((name, i, "prompt words", wc(p), p))
        if not 5 <= wc(c) <= 25: errs.append((name, i, "chosen words", wc(c), c))
        if not 15 <= wc(r) <= 60: errs.append((name, i, "rejected words", wc(r), r))
        # chosen: one plain sentence ending in a period
        body = re.sub(r"(?<=\d)\.(?=\d)", "", c)
        if not c.endswith(".") or re.search(r"[.!?]", body[:-1]) or "\n" in c or re.search(r"[*#•]|^- ", c):
            errs.append((name, i, "chosen not one plain sentence", c))
        if c == r: errs.append((name, i, "chosen == rejected"))
        if norm(p) in seen: errs.append((name, i, "duplicate prompt", p))
        seen.add(norm(p))
    return seen
train = load(sys.argv[1]); ev = load(sys.argv[2])
st = check(train, "train"); se = check(ev, "eval")
if st & se: errs.append(("train/eval overlap", st & se))
# near-duplicates between eval and train prompts
worst = []
for e in ev:
    best = max(train, key=lambda t: difflib.SequenceMatcher(None, norm(e["prompt"]), norm(t["prompt"])).ratio())
    worst.append((difflib.SequenceMatcher(None, norm(e["prompt"]), norm(best["prompt"])).ratio(), e["prompt"], best["prompt"]))
worst.sort(reverse=True)
for w in worst[:6]: print("eval~train %.2f | %s | %s" % w)
if worst[0][0] >= 0.8: errs.append(("eval prompt too close to train", worst[0]))
for e in errs: print("ERR", e)
def stats(rows, k): ws = [wc(o[k]) for o in rows]; return "%d-%d (mean %.1f)" % (min(ws), max(ws), sum(ws)/len(ws))
for nm, rows in (("train", train), ("eval", ev)):
    print(nm, len(rows), "rows | prompt", stats(rows, "prompt"), "| chosen", stats(rows, "chosen"), "| rejected", stats(rows, "rejected"))
sys.exit(1 if errs else 0)
