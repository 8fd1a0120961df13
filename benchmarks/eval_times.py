"""Print every stored evaluation's time (``seconds`` of RUN/evals/*/result.json) under the given folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(roots: list[str]) -> None:
    rows = []
    for root in roots:
        for path in sorted(Path(root).glob("**/evals/*/result.json")):
            if ".finetune" in path.parts:
                continue
            res = json.loads(path.read_text())
            run = path.parent.parent.parent
            rows.append((f"{run.parent.name}/{run.name}", path.parent.name.rsplit("-", 1)[0], res.get("seconds")))
    print("| run | evaluator | seconds |\n|---|---|---:|")
    for run, name, secs in rows:
        print(f"| {run} | {name} | {secs} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["results"])
