"""What a swapped conv costs inside a model against alone, in onnxruntime on the CPU (what a per-layer table misses).

    .venv/bin/python benchmarks/bench_swap_layout.py            # the demo's conv 3 at 320: 32 -> 64, 3x3, stride 2

The site's conv and each swap's replacement are timed between a 3x3 conv before and after it (the chain a model runs)
and alone, layer by layer as `latency_model.LatencyTable` times its entries (the minimum of many runs, 1 thread).
Each row's cost is against the dense conv: in the chain, and as the sum of its lone layers. It also lists the ops the
runtime's optimizer leaves in the chain: onnxruntime keeps some grouped convs (here those with 4 or 8 groups, 8 or 4
input channels per group) out of its blocked NCHWc layout, so the chain gains a ReorderOutput before and a
ReorderInput after it, which the layer alone does not pay.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, load  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hw", type=int, default=80, help="the conv's input side")
    p.add_argument("--cin", type=int, default=32)
    p.add_argument("--cout", type=int, default=64)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    header()

    import torch
    from torch import nn

    from autoprune.latency_model import LayerConfig, _layer_session, _min_loop, swap_layers

    torch.manual_seed(0)
    site = LayerConfig("conv", (args.hw, args.hw), args.cin, args.cout, (3, 3), (args.stride,) * 2, (1, 1), (1, 1), 1,
                       "SiLU")
    pre = LayerConfig("conv", site.in_hw, 16, args.cin, (3, 3), (1, 1), (1, 1), (1, 1), 1, "SiLU")
    oh, ow = site.out_hw()
    post = LayerConfig("conv", (oh, ow), args.cout, args.cout, (3, 3), (1, 1), (1, 1), (1, 1), 1, "SiLU")

    def best(module, ch, hw) -> float:
        session = _layer_session("onnxruntime", module.eval(), torch.device("cpu"), ch, hw, 1, "fp32", 1)
        return min(_min_loop(session.forward, runs=200, max_s=2.0))

    def ops(module, ch, hw) -> list[str]:
        import contextlib
        import io
        import tempfile
        import warnings

        import onnx
        import onnxruntime as ort

        buf = io.BytesIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(None), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (torch.rand(1, ch, hw, hw),), buf, opset_version=17, dynamo=False)
        with tempfile.TemporaryDirectory() as tmp:
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.optimized_model_filepath = f"{tmp}/opt.onnx"
            so.log_severity_level = 3
            ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
            return [n.op_type for n in onnx.load(f"{tmp}/opt.onnx").graph.node]

    kinds = ["keep", "dws", "group2", "group4", "group8", "factor"]
    rows = {k: [float("inf"), float("inf")] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            layers = swap_layers(site, kind)
            chain = nn.Sequential(pre.module(), *[c.module() for c in layers], post.module())
            rows[kind][0] = min(rows[kind][0], best(chain, pre.cin, args.hw))
            alone = sum(best(c.module(), c.cin, c.in_hw[0] if c.in_hw[0] == c.in_hw[1] else c.in_hw)
                        for c in [pre, *layers, post])
            rows[kind][1] = min(rows[kind][1], alone)
    print(f"site {args.cin} -> {args.cout}, 3x3, stride {args.stride}, at {args.hw} x {args.hw}; onnxruntime, "
          f"1 thread; {load()}")
    print("| kind | in the chain ms | vs dense | lone layers ms | vs dense | reorders in the chain |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in kinds:
        chain = nn.Sequential(pre.module(), *[c.module() for c in swap_layers(site, kind)], post.module())
        reorders = sum(op.startswith("Reorder") for op in ops(chain, pre.cin, args.hw))
        (c, a), (c0, a0) = rows[kind], rows["keep"]
        print(f"| {kind} | {c:.3f} | {c - c0:+.3f} | {a:.3f} | {a - a0:+.3f} | {reorders} |")


if __name__ == "__main__":
    main()
