"""Can the network's compile cost be paid when the image is built? Each step in a fresh process, as a build and a
pod would run it, on one padded chunk (the only shape the network sees):

    python bench/compile_cache.py [--model htdemucs] [--modes eager,trace,compile] [--out bench/out/compile]

- eager: load the model; first and second forward pass (the reference);
- trace, "build": jit.trace + freeze (saved to OUT/traced-frozen.pt) + optimize_for_inference (saved to
  OUT/traced-optimized.pt), first and second call; "pod-optimized": `torch.jit.load` of the optimised file;
  "pod": `torch.jit.load` of the frozen file + optimize_for_inference at run time (no tracing either way);
- compile, "build": `torch.compile` (inductor) with an empty cache dir OUT/inductor-cache (what an image would bake),
  first call (compiles) and second; "pod": a fresh process, the same cache dir, first call (Dynamo traces again,
  the compiled kernels come from the cache) and second.
Also printed: the CPU capability ATen dispatches to and the vector ISA inductor generated code for; code built for
one ISA (e.g. AVX-512) is not valid on a CPU without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    import torch
    from demucs.api import Separator

    from bench import model_variants
    from workbench import model_repo

    model_repo.write_model(args.repo, args.model)
    separator = Separator(model=args.model, repo=args.repo, device="cpu", progress=False)
    model = model_variants.inner(separator).eval()
    chunk = model_variants.example_chunk(separator)
    result: dict[str, Any] = {"step": args.child, "ready_s": time.perf_counter() - started,
                              "threads": torch.get_num_threads(),
                              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    traced_path, optimized_path = args.out / "traced-frozen.pt", args.out / "traced-optimized.pt"
    tick = time.perf_counter()
    if args.child == "eager":
        forward = model
    elif args.child == "trace-build":
        with torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(model, chunk, check_trace=False).eval())
            torch.jit.save(frozen, str(traced_path))
            forward = torch.jit.optimize_for_inference(frozen)
        torch.jit.save(forward, str(optimized_path))
    elif args.child == "trace-pod-optimized":
        forward = torch.jit.load(str(optimized_path))
    elif args.child == "trace-pod":
        with torch.no_grad():
            forward = torch.jit.optimize_for_inference(torch.jit.load(str(traced_path)))
    else:  # compile-build, compile-pod: the cache dir comes from the environment
        forward = torch.compile(model)
    result["prepare_s"] = time.perf_counter() - tick
    for name in ("first_call_s", "second_call_s"):
        tick = time.perf_counter()
        with torch.no_grad():
            forward(chunk)
        result[name] = time.perf_counter() - tick
    if args.child.startswith("compile"):
        from torch._inductor import cpu_vec_isa

        result["inductor_vec_isa"] = str(cpu_vec_isa.pick_vec_isa())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="htdemucs")
    parser.add_argument("--repo", type=Path, default=ROOT / ".models")
    parser.add_argument("--modes", default="eager,trace,compile")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "compile")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        print("COMPILE " + json.dumps(child(args)), flush=True)
        return 0
    steps = {"eager": ["eager"], "trace": ["trace-build", "trace-pod-optimized", "trace-pod"],
             "compile": ["compile-build", "compile-pod"]}
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(args.out / "inductor-cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    results = []
    for mode in args.modes.split(","):
        for step in steps[mode.strip()]:
            done = subprocess.run([sys.executable, __file__, "--child", step, "--model", args.model, "--repo",
                                   str(args.repo), "--out", str(args.out)], env=env, capture_output=True, text=True)
            line = next((x for x in done.stdout.splitlines() if x.startswith("COMPILE ")), None)
            if done.returncode != 0 or line is None:
                tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
                results.append({"step": step, "error": f"exit {done.returncode}: {tail[0][:300]}"})
            else:
                results.append(json.loads(line[8:]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    lines = [f"One padded chunk of {args.model}, each step a fresh process.", "",
             "| step | prepare s (trace / load / compile wrapper) | first call s | second call s | notes |",
             "|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['step']} | | | | failed: {r['error']} |")
            continue
        notes = f"{r['threads']} threads, ATen CPU capability {r['cpu_capability']}"
        if "inductor_vec_isa" in r:
            notes += f", inductor ISA {r['inductor_vec_isa']}"
        lines.append(f"| {r['step']} | {r['prepare_s']:.2f} | {r['first_call_s']:.2f} | {r['second_call_s']:.2f} | "
                     f"{notes} |")
    text = "\n".join(lines) + "\n"
    (args.out / "compile.md").write_text(text)
    (args.out / "compile.json").write_text(json.dumps(results, indent=2))
    print(text)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
