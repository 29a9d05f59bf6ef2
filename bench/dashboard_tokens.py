"""Tokens for sae-dashboard's side of the dashboards benchmark: the fortunes qexp reads
(separator `\\n%\\n`, each cut at 512 tokens, in file order) tokenized with qexp's exported
tokenizer, concatenated and cut into rows of ROW tokens (the rectangular batch
sae-dashboard takes) until TOKENS tokens, written as a JSON list of rows.

    python bench/dashboard_tokens.py TOKENIZER_JSON TEXT TOKENS ROW OUT_JSON
"""

import json
import sys

from tokenizers import Tokenizer


def main():
    tokenizer_json, text, total, row, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    tokenizer = Tokenizer.from_file(tokenizer_json)
    stream = []
    for fortune in open(text, encoding="utf-8").read().split("\n%\n"):
        if len(stream) >= total:
            break
        if fortune.strip():
            stream.extend(tokenizer.encode(fortune, add_special_tokens=False).ids[:512])
    rows = len(stream[:total]) // row
    json.dump([stream[i * row : (i + 1) * row] for i in range(rows)], open(out, "w"))


if __name__ == "__main__":
    main()
