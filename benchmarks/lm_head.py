"""Answer-position LM head on a CPU: TRL's default 32k-wide vocabulary tiles vs the 1k-wide tiles this library uses.

    python benchmarks/lm_head.py [--repeats 3]

The log-probs of the answer tokens need the whole 49,152-word softmax at every scored position: 20 candidates of about
11 tokens each make ~230 positions per ranking prompt, ~190 per K = 15 training row. TRL's chunked kernel folds the
vocabulary in tiles; without Triton (CPU) every tile operation is a torch op on a `[positions, tile]` tensor, and at
the default width of 32,768 each temporary is hundreds of MB, which glibc maps fresh from the OS (page faults, system
time) on every call. Both widths compute the same values; the script prints the time of each, side by side, for a
ranking batch (forward, no grad) and a training batch (forward + backward), and the speed-up.
"""

import argparse

import torch
from _measure import median_time
from trl.kernels import ChunkedLogProbFunction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=576, help="SmolLM2-135M: 576")
    parser.add_argument("--vocab", type=int, default=49152, help="SmolLM2-135M: 49,152")
    args = parser.parse_args()
    torch.manual_seed(0)
    weight = torch.randn(args.vocab, args.hidden) * 0.05
    cases = [
        ("ranking, 8 prompts x 228 positions, forward", 8 * 228, False),
        ("training, 8 rows x 192 positions, fwd + bwd", 8 * 192, True),
    ]
    print("| batch | TRL default tile 32768 (s) | tile 1024 (s) | speed-up | max |Δ logp| |")
    print("|---|---:|---:|---:|---:|")
    for name, positions, backward in cases:
        hidden = torch.randn(positions, args.hidden)
        targets = torch.randint(0, args.vocab, (positions,))
        outputs = {}

        def run(chunk, hidden=hidden, targets=targets, backward=backward, outputs=outputs):
            h = hidden.clone().requires_grad_(backward)
            with torch.set_grad_enabled(backward):
                out = ChunkedLogProbFunction.apply(h, weight, None, targets, 1.0, chunk, None, 1.0, ("log_probs",))[0]
                if backward:
                    out.sum().backward()
            outputs[chunk] = out.detach()

        naive = median_time(lambda: run(32768), args.repeats)
        ours = median_time(lambda: run(1024), args.repeats)
        diff = (outputs[32768] - outputs[1024]).abs().max().item()
        print(f"| {name} | {naive:.3f} | {ours:.3f} | {naive / ours:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
