#!/usr/bin/env python3
"""Read a Finch run's TensorBoard event files with the `tensorboard` package and compare every
scalar with the run's metrics.jsonl (`finch train ... --report-to jsonl,tensorboard`).

Each metrics.jsonl training line {step, key: value} must appear as the scalar `train/<key>` at
that step, and each evaluation line's `eval_<key>` as `eval/<key>`, with the value rounded to
float32 (TensorBoard's simple_value); and no scalar may be in the events without its JSONL line.

Usage: python3 reference/check_tensorboard.py RUN_DIR
Needs: pip install tensorboard
"""
import glob
import json
import os
import struct
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def main():
    run = sys.argv[1]
    files = glob.glob(os.path.join(run, "tensorboard", "events.out.tfevents.*"))
    assert files, "no event files in " + os.path.join(run, "tensorboard")
    expected = {}
    for line in open(os.path.join(run, "metrics.jsonl")):
        m = json.loads(line)
        step = m.pop("step")
        evaluation = any(k.startswith("eval_") for k in m)
        for key, value in m.items():
            if not isinstance(value, (int, float)):
                continue
            tag = "eval/" + key[len("eval_"):] if evaluation else "train/" + key
            expected[(tag, step)] = value
    seen = {}
    texts = 0
    for path in files:
        acc = EventAccumulator(path, size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                seen[(tag, event.step)] = event.value
        texts += len(acc.Tags().get("tensors", []))
    missing = [k for k in expected if k not in seen]
    extra = [k for k in seen if k not in expected]
    wrong = [(k, expected[k], seen[k]) for k in expected if k in seen and seen[k] != f32(expected[k])]
    print(f"{len(seen)} scalars in {len(files)} event file(s), {len(expected)} JSONL values, {texts} text tags; "
          f"missing {len(missing)}, extra {len(extra)}, different {len(wrong)}")
    for item in (missing[:5] + extra[:5] + wrong[:5]):
        print("  ", item)
    sys.exit(1 if missing or extra or wrong else 0)


if __name__ == "__main__":
    main()
