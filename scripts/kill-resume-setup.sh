# Sourced by kill-resume.sh and demo-kill-resume.sh: builds finch if needed, makes a work folder
# (removed on exit) with the trainer fixtures' tiny model and 40 preference pairs, and sets ARGS
# to an ORPO run of $MAX_STEPS steps that saves every $SAVE_STEPS.
cd "$(dirname "$0")/.."
FINCH=${FINCH:-.build/release/finch}
[ -x "$FINCH" ] || swift build -c release --product finch >/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -r Tests/FinchTestSupport/Fixtures/trainers/model "$WORK/model"
cp Tests/FinchTestSupport/Fixtures/trainers/tokenizer/tokenizer*.json "$WORK/model/"
for i in $(seq 0 39); do
    echo "{\"prompt\": \"Question $i: what is $i plus $i?\", \"chosen\": \"$i plus $i is $((2 * i)).\", \"rejected\": \"It might be $((2 * i + 1)), I think, but check.\"}"
done > "$WORK/pairs.jsonl"
ARGS=(train --method orpo --model "$WORK/model" --data "$WORK/pairs.jsonl" --max-steps "$MAX_STEPS" --batch-size 2 --grad-accum 2
      --save-steps "$SAVE_STEPS" --lora-r 8 --lora-dropout 0.1 --lr 1e-3 --seed 9)
