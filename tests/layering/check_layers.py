#!/usr/bin/env python3
"""Fails when a lower layer includes a higher one (docs/design.md, "Layers").

Library layers (include/hdpissa), lowest first; a file may include its own layer or lower ones:
  0 core      concepts, views, errors
  1 backend   EigenBackend, CudaBackend (+ their kernels)     1 optim     Adam, SGD, schedules
  2 comm      communicators                                    2 analysis  effective rank
  3 adapter   inits, MutedLinear, DirectWeightUpdate, baselines
  4 the umbrella headers (include/hdpissa/*.hpp)
Then the LLaMA example (examples/llama/include/llama), above the whole library:
  5 model     llama/*.hpp, llama/cuda/* (checkpoints, tokenizer, data, the CPU and GPU models)
  6 trainer   llama/train/* and src/ (methods, engines, the loop)
The library never includes the example; the model never includes the trainer.
Usage: check_layers.py [repository root]   (exit 0: clean; 1: violations, each printed)
"""
import pathlib
import re
import sys

LIB = {"core": 0, "backend": 1, "optim": 1, "comm": 2, "analysis": 2, "adapter": 3}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
SOURCES = ("*.hpp", "*.cuh", "*.h", "*.cu", "*.cpp")


def layer_of_include(path: str):
    """Layer of an include target given as written ("hdpissa/core/x.hpp", "llama/train/y.hpp")."""
    parts = path.split("/")
    if parts[0] == "hdpissa":
        if len(parts) == 2:
            return 4, "umbrella"
        return LIB.get(parts[1]), parts[1]
    if parts[0] == "llama":
        return (6, "trainer") if len(parts) > 2 and parts[1] == "train" else (5, "model")
    return None, None


def layer_of_file(root: pathlib.Path, f: pathlib.Path):
    rel = f.relative_to(root).as_posix()
    if rel.startswith("include/hdpissa/"):
        return layer_of_include(rel[len("include/"):])
    if rel.startswith("examples/llama/include/"):
        return layer_of_include(rel[len("examples/llama/include/"):])
    if rel.startswith("examples/llama/src/"):
        return 6, "trainer"
    return None, None


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2])
    files = []
    for base in ("include/hdpissa", "examples/llama/include", "examples/llama/src"):
        for pat in SOURCES:
            files += sorted((root / base).rglob(pat))
    if not files:
        print(f"check_layers: no sources under {root}", file=sys.stderr)
        return 1
    bad = []
    for f in files:
        mine, my_name = layer_of_file(root, f)
        if mine is None:
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in INCLUDE.finditer(text):
            target, name = layer_of_include(m.group(1))
            if target is not None and target > mine:
                line = text.count("\n", 0, m.start()) + 1
                bad.append(f"{f.relative_to(root)}:{line}: layer '{my_name}' ({mine}) includes "
                           f"\"{m.group(1)}\" of higher layer '{name}' ({target})")
    for b in bad:
        print(b)
    print(f"check_layers: {len(files)} files, {len(bad)} violation(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
