"""Print the README's model-zoo table: parameters and multiply-accumulates of every registered model next to
the paper's figures (Tables 2, 6, 7) and the recount of the official prototxts.

    python scripts/model_zoo.py
"""

from __future__ import annotations

import resattn

#: name -> (paper params, paper MACs, note). MACs are the paper's "FLOPs", which are multiply-accumulates.
PAPER = {
    "attention56_imagenet": ("31.9M", "6.2G (T2) / 6.3G (T7)", "prototxt recount 31.8M / 6.27G"),
    "attention92_imagenet": ("51.3M", "10.4G", "prototxt recount 52.5M / 10.53G"),
    "attention92_cifar": ("1.9M", "–", "CIFAR topology is a reconstruction: estimate 1.75M"),
    "attention236_cifar": ("5.1M", "–", "reconstruction"),
    "attention452_cifar": ("8.6M", "–", "p=2, t=4, r=3; reconstruction"),
    "resnet164_cifar": ("1.7M", "–", "baseline of Tables 5 and 6"),
}


def main() -> None:
    print("| model | input | parameters | MACs | paper parameters | paper MACs | note |")
    print("|---|---|---|---|---|---|---|")
    def order(name: str) -> tuple[str, int]:
        family, variant = name.split("_")
        return variant, int("".join(c for c in family if c.isdigit()))

    for name in sorted(resattn.list_models(), key=order):
        size = 224 if name.endswith("imagenet") else 32
        model = resattn.create_model(name)
        params = resattn.count_params(model) / 1e6
        macs = resattn.count_macs(model, size) / 1e9
        paper_params, paper_macs, note = PAPER.get(name, ("–", "–", ""))
        print(f"| `{name}` | {size}×{size} | {params:.2f}M | {macs:.2f}G | {paper_params} | {paper_macs} | {note} |")


if __name__ == "__main__":
    main()
