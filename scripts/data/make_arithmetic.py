#!/usr/bin/env python3
"""Write data/arithmetic.jsonl and data/arithmetic_eval.jsonl: one-step arithmetic word problems
(written for Finch: own templates, names and objects) for the bundled GRPO example.

Each line is TRL's prompt-only format with an extra column for the reward function:
  {"prompt": [{"role": "user", "content": "<problem> <instruction>"}], "answer": "<integer>"}
The instruction asks for the final line "Answer: <number>", which the example's format reward
looks for; the exact-match reward compares that number with `answer`.

Deterministic (seeded); run from the repository root: python3 scripts/data/make_arithmetic.py
"""
import json
import os
import random

NAMES = ["Ada", "Bo", "Cleo", "Dev", "Ema", "Finn", "Gus", "Hana", "Ivo", "Jude", "Kai", "Lena", "Milo", "Nia", "Omar",
         "Pia", "Quin", "Rosa", "Sami", "Tove"]
THINGS = ["apples", "marbles", "stamps", "shells", "pencils", "cookies", "stickers", "coins", "books", "buttons", "cards", "eggs"]
INSTRUCTION = "Think briefly, then end with a line of the form 'Answer: <number>'."

# (template, how the answer follows from a and b); a and b are drawn so the answer is a small
# positive integer.
TEMPLATES = [
    ("{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?", lambda a, b: a + b),
    ("{n} had {a} {t} and gave {b} of them away. How many {t} are left?", lambda a, b: a - b),
    ("There are {a} boxes with {b} {t} in each box. How many {t} are there in all?", lambda a, b: a * b),
    ("{n} shares {a} {t} equally among {b} friends. How many {t} does each friend get?", lambda a, b: a // b),
    ("{n} buys {a} bags of {t}. Each bag holds {b} {t}. How many {t} did {n} buy?", lambda a, b: a * b),
    ("A shelf holds {a} {t}. {n} takes {b} of them. How many {t} stay on the shelf?", lambda a, b: a - b),
    ("{n} collects {a} {t} on Monday and {b} {t} on Tuesday. How many {t} is that together?", lambda a, b: a + b),
    ("{a} {t} are packed into groups of {b}. How many groups are there?", lambda a, b: a // b),
]


def problem(rng):
    index = rng.randrange(len(TEMPLATES))
    template, answer = TEMPLATES[index]
    if answer(6, 3) == 2:            # division: a is a multiple of b
        b = rng.randint(2, 9)
        a = b * rng.randint(2, 9)
    elif answer(6, 3) == 3:          # subtraction: a > b
        a = rng.randint(8, 40)
        b = rng.randint(1, a - 1)
    elif answer(6, 3) == 18:         # multiplication
        a, b = rng.randint(2, 9), rng.randint(2, 9)
    else:                            # addition
        a, b = rng.randint(2, 40), rng.randint(2, 40)
    text = template.format(n=rng.choice(NAMES), t=rng.choice(THINGS), a=a, b=b)
    return {"prompt": [{"role": "user", "content": text + " " + INSTRUCTION}], "answer": str(answer(a, b))}


def main():
    rng = random.Random(2026)
    seen, rows = set(), []
    while len(rows) < 224:
        row = problem(rng)
        key = row["prompt"][0]["content"]
        if key not in seen:
            seen.add(key)
            rows.append(row)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data")
    for name, part in (("arithmetic.jsonl", rows[:200]), ("arithmetic_eval.jsonl", rows[200:])):
        with open(os.path.join(out, name), "w") as f:
            for row in part:
                f.write(json.dumps(row) + "\n")
        print(f"wrote data/{name}: {len(part)} problems")


if __name__ == "__main__":
    main()
