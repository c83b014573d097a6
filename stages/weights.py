"""weights: convert the installed ImageNet weights packages to timm state_dicts, once."""

from __future__ import annotations

import argparse

from pipeline_lib import artifacts, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder for <arch>.pth files")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    written = weights.convert_installed(args.out)
    artifacts.write_json(args.metrics, {"architectures": len(written), "tensors": written})
    print(f"weights: {', '.join(f'{a} ({n} tensors)' for a, n in written.items()) or 'none'}")


if __name__ == "__main__":
    main()
