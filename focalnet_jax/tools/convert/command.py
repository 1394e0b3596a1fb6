"""`python -m focalnet_jax.tools.convert`: a published weight file -> a focalnet_jax checkpoint directory."""
from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

from focalnet_jax import atomic
from focalnet_jax.tools import cli
from focalnet_jax.weights.layouts import detect_layout
from focalnet_jax.weights.reading import load_checkpoint
from focalnet_jax.weights.diagnose import compact
from focalnet_jax.weights.to_flax import backbone_conversion, convert_state_dict


def build_parser() -> argparse.ArgumentParser:
  """The converter's arguments."""
  parser = argparse.ArgumentParser(
      prog="python -m focalnet_jax.tools.convert",
      description="Convert published PyTorch FocalNet weights (official .pth, timm or HF transformers "
      ".safetensors/.bin) into a focalnet_jax checkpoint directory.",
  )
  parser.add_argument("--model", required=True, help="variant name, e.g. focalnet_tiny_srf")
  parser.add_argument(
      "--checkpoint", required=True, help=".pth/.pt/.bin/.safetensors file, or an HF hub snapshot directory"
  )
  parser.add_argument(
      "--output", required=True, help="checkpoint directory to write (must not exist, or be empty)"
  )
  head = parser.add_mutually_exclusive_group()
  head.add_argument(
      "--drop-head", action="store_true",
      help="discard the checkpoint's classifier; a model with a head gets a freshly initialised one",
  )
  head.add_argument(
      "--head-to-1k", action="store_true",
      help="cut a 21842-class ImageNet-22K head to its first 1000 rows (the ImageNet-1K classes)",
  )
  dense = parser.add_argument_group(
      "backbone", "write a FocalNetBackbone checkpoint (num_classes=0) for a detector or segmenter, e.g. from an "
      "official mmdet detection checkpoint ({'state_dict': {'backbone.*', 'neck.*', ...}}: only the backbone is kept)")
  dense.add_argument("--backbone", action="store_true", help="convert into a FocalNetBackbone; drops what it lacks")
  dense.add_argument("--out-indices", type=_indices, default=None, metavar="I,J,...",
                     help="the stages the backbone outputs (default: all four)")
  dense.add_argument("--out-norms", action=argparse.BooleanOptionalAction, default=None,
                     help="per-output LayerNorms norm0..norm3 (default: when the checkpoint has them)")
  dense.add_argument("--detection", action="store_true",
                     help="the official detection backbones' settings: focal window 9, conv stem padding 3")
  cli.add_override_argument(parser)
  parser.add_argument("--force", action="store_true", help="replace an existing non-empty output directory")
  parser.add_argument(
      "--trust-pickle", action="store_true",
      help="read .pth files that pickle more than tensors (torch.load weights_only=False); "
      "only for files you trust",
  )
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the converter; returns 0 on success, exits with a message on any error."""
  from focalnet_jax import checkpoint
  from focalnet_jax.tools.summary import num_params

  args = build_parser().parse_args(argv)
  overrides = cli.overrides(args.override)
  output = os.path.abspath(args.output)
  occupied = os.path.exists(output) and (not os.path.isdir(output) or bool(os.listdir(output)))
  if occupied and not args.force:  # checked first, so a refusal costs nothing
    raise SystemExit(
        f"error: {output} already exists and is not empty; refusing to overwrite it. "
        "Choose another --output, or pass --force to replace it."
    )
  backbone = _backbone_args(args)
  try:
    state_dict = load_checkpoint(args.checkpoint, trust_pickle=args.trust_pickle)
    layout, _ = detect_layout(list(state_dict))
    settings, dropped = None, {}
    if args.backbone:
      settings, dropped = backbone_conversion(
          state_dict, args.model, **{k: v for k, v in backbone.items() if k != "backbone"}, **overrides)
    variables = convert_state_dict(
        state_dict, args.model, drop_head=args.drop_head, head_to_1k=args.head_to_1k, **backbone, **overrides
    )
    checkpoint.check_finite(variables, repr(args.checkpoint))
  except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
    raise SystemExit(f"error: {e}") from e

  _write_then_swap(output, lambda path: checkpoint.save(
      path, {"params": variables["params"]}, _meta(args, overrides, layout, settings), step=0))
  over = "".join(f" {k}={v}" for k, v in overrides.items())
  what = f"a backbone of {args.model}{over} ({', '.join(f'{k}={v}' for k, v in settings.items())})" if settings \
      else f"{args.model}{over}"
  print(f"Converted {args.checkpoint} ({layout} layout) to {what}: "
        f"{num_params(variables['params']):,} parameters.")
  for reason, keys in dropped.items():
    print(f"Dropped {reason} ({len(keys)} keys):" + compact(keys, limit=4))
  print(f"Wrote {output} (step 0).")
  if settings:
    print("Rebuild it: focalnet_jax.model.backbone.backbone_from_meta(focalnet_jax.checkpoint.read_meta(path))")
  else:
    print(f"Evaluate it:  python eval.py --config configs/<config>.py --checkpoint {output}\n"
          f"Fine-tune it: python train.py --config configs/<config>.py --config.init_from={output} "
          "--workdir runs/<name>")
  return 0


def _indices(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected stage indices separated by commas, e.g. 1,2,3") from None


def _backbone_args(args: argparse.Namespace) -> dict[str, Any]:
  """convert_state_dict's backbone arguments from the command line (checked before reading)."""
  given = {k: v for k, v in (("out_indices", args.out_indices), ("out_norms", args.out_norms)) if v is not None}
  if not args.backbone:
    if given or args.detection:
      raise SystemExit("error: --out-indices, --out-norms and --detection describe a backbone: add --backbone.")
    return {}
  if args.drop_head or args.head_to_1k:
    raise SystemExit("error: a backbone has no head: --backbone drops it already (no --drop-head/--head-to-1k).")
  return {"backbone": True, "detection": args.detection, **given}


def _write_then_swap(output: str, write) -> None:
  """`write(path)` into a new directory beside `output`, which replaces `output` only once it is
  complete: a failed write (a full disk) leaves the old output as it was."""
  try:
    with atomic.replacing(output) as new:
      write(new)
  except atomic.WriteFailed as e:
    raise SystemExit(f"error: {e}") from e


def _meta(args: argparse.Namespace, overrides: dict[str, Any], layout: str,
          backbone: dict[str, Any] | None = None) -> dict[str, Any]:
  """What the checkpoint records about its model and where its weights came from. A backbone
  records num_classes=0 and its settings (`backbone_from_meta` rebuilds it)."""
  meta = {
      "model": args.model,
      "model_overrides": {**overrides, "num_classes": 0} if backbone else overrides,
      "source": {
          "path": os.path.abspath(args.checkpoint),
          "layout": layout,
          "drop_head": bool(args.drop_head),
          "head_to_1k": bool(args.head_to_1k),
      },
  }
  if backbone:
    meta["backbone"] = backbone
  return meta
