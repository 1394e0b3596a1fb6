"""The three key layouts published for the same FocalNet weights, one table each.

  - 'official': microsoft/FocalNet `.pth` files, usually wrapped as `{'model': state_dict, ...}`.
    `patch_embed.proj/norm.*`; blocks `layers.i.blocks.j.*` with `norm1/norm2`,
    `modulation.f/h/proj/ln`, `mlp.fc1/fc2` and layerscale `gamma_1/gamma_2`; the downsample
    `layers.i.downsample.proj/norm.*` at the end of stage i (i = 0..2); `norm.*`; `head.*`.
    `f`, `proj`, `fc1`, `fc2` and the head are Linear layers ([out, in]); `h` is a 1x1 conv.
  - 'timm': `timm/focalnet_*` on the HF hub (safetensors). `stem.proj/norm.*`; the same block
    keys, except `modulation.norm` for `ln`, `ls1.gamma/ls2.gamma` for the layerscale and
    `norm1_post/norm2_post` for post-norm blocks; the downsample at the start of the next stage
    (`layers.{i+1}.downsample.*`); `head.fc.*`. Every Linear of the official code is a 1x1
    conv ([out, in, 1, 1]).
  - 'hf': HF transformers `microsoft/focalnet-*`. Backbone keys under `focalnet.` (absent for a
    bare FocalNetModel): `embeddings.patch_embeddings.projection.*`, `embeddings.norm.*`,
    blocks `encoder.stages.i.layers.j.*` with `modulation.projection_in/projection_context/
    projection_out/layernorm`, layerscale `gamma_1/gamma_2`, the downsample
    `encoder.stages.i.downsample.projection/norm.*` and `layernorm.*`; the head is
    `classifier.*`, outside the prefix.
The official detection backbones (microsoft/FocalNet `detection/`, mmdet) use the official
layout under `backbone.` inside an mmdet `{'state_dict': ...}`, beside `neck.`/`rpn_head.`/
`decode_head.` keys, with no head or final `norm` but a LayerNorm `norm{i}` per output. Any
prefix ending in '.' before a layout's stem key is recognised (`backbone.`, DINO's `backbone.0.`).
All three share the focal convolutions `...modulation.focal_layers.l.0.weight` ([C, 1, k, k]) and
the MLP names. Post-norm blocks are visible in timm's keys only: the official code and HF name
pre- and post-norms alike.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import Mapping, Sequence

# Our leaf names -> PyTorch's.
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def module_pattern(template: str) -> re.Pattern[str]:
  """Matches the start of the keys of any module `template` names: 'layers.{i}.blocks.{j}'
  captures i and j (digits); a '{sub}' matches one name without capturing."""
  escaped = re.escape(template).replace(r"\{sub\}", r"[^.]+")  # re.escape writes '{i}' as r'\{i\}'
  return re.compile("^" + re.sub(r"\\\{\w+\\\}", r"(\\d+)", escaped) + r"\.")


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one published layout names each part of the network (see the module docstring).

  Formats take `i` (stage), `j` (block), `n` (1 or 2) and `sub` (our submodule name after the
  layout's renames). Every key but the head's starts with the state dict's prefix.
  """

  name: str
  source: str  # who publishes it, for messages
  prefixes: tuple[str, ...]  # backbone prefixes to try, longest first
  stem: Mapping[str, str]  # our stem submodule ('proj', 'norm') -> module
  block: str  # one block's module
  downsample: str  # the downsample's module, stage index `i` as in its keys
  downsample_stage_offset: int  # stage index in the downsample's keys minus the stage it ends
  downsample_renames: Mapping[str, str]
  modulation_renames: Mapping[str, str]
  layerscale: str  # a block's layerscale parameter n, relative to the block
  post_norm: str | None  # a post-norm block's norm n, if named apart from a pre-norm
  final_norm: str
  head: str  # the classifier's module, never prefixed
  output_norm: str = "norm{i}"  # a detection backbone's LayerNorm on output i (official names)

  @property
  def stem_key(self) -> str:
    """The stem's conv weight, whose presence identifies the layout."""
    return f"{self.stem['proj']}.weight"

  def block_pattern(self, prefix: str = "") -> re.Pattern[str]:
    """Matches the start of any block key, capturing (stage, block)."""
    return module_pattern(prefix + self.block)

  def output_norm_pattern(self, prefix: str = "") -> re.Pattern[str]:
    """Matches the start of any backbone output norm's key, capturing the output."""
    return module_pattern(prefix + self.output_norm)

  def block_module(self, i: int, j: int, prefix: str = "") -> str:
    """Block j of stage i."""
    return prefix + self.block.format(i=i, j=j)

  def modulation_module(self, sub: str) -> str:
    """`ln`, `f`, `h`, `proj` as this layout names them inside `modulation`."""
    return self.modulation_renames.get(sub, sub)

  def head_key(self, leaf: str = "weight") -> str:
    """The classifier's weight (or `leaf`), never prefixed."""
    return f"{self.head}.{leaf}"

  def stage_of(self, key: str, prefix: str = "") -> int | None:
    """The stage a block or downsample key belongs to (the stage the downsample ends), else None."""
    m = self.block_pattern(prefix).match(key)
    if m:
      return int(m.group(1))
    m = module_pattern(prefix + self.downsample).match(key)
    return int(m.group(1)) - self.downsample_stage_offset if m else None

  def is_head_key(self, key: str) -> bool:
    """Whether `key` belongs to the classifier."""
    return key.startswith(self.head + ".")


OFFICIAL = Layout(
    name="official",
    source="official microsoft/FocalNet",
    prefixes=("backbone.", ""),  # an mmdet detector's or segmenter's backbone, or the classifier
    stem={"proj": "patch_embed.proj", "norm": "patch_embed.norm"},
    block="layers.{i}.blocks.{j}",
    downsample="layers.{i}.downsample.{sub}",
    downsample_stage_offset=0,
    downsample_renames={},
    modulation_renames={},
    layerscale="gamma_{n}",
    post_norm=None,
    final_norm="norm",
    head="head",
)
TIMM = dataclasses.replace(
    OFFICIAL,
    name="timm",
    prefixes=("",),
    source="timm",
    stem={"proj": "stem.proj", "norm": "stem.norm"},
    downsample_stage_offset=1,  # timm strides at the start of a stage
    modulation_renames={"ln": "norm"},
    layerscale="ls{n}.gamma",
    post_norm="norm{n}_post",
    head="head.fc",
)
HF = Layout(
    name="hf",
    source="HF transformers",
    prefixes=("focalnet.", ""),
    stem={"proj": "embeddings.patch_embeddings.projection", "norm": "embeddings.norm"},
    block="encoder.stages.{i}.layers.{j}",
    downsample="encoder.stages.{i}.downsample.{sub}",
    downsample_stage_offset=0,
    downsample_renames={"proj": "projection"},
    modulation_renames={"f": "projection_in", "h": "projection_context", "proj": "projection_out",
                        "ln": "layernorm"},
    layerscale="gamma_{n}",
    post_norm=None,
    final_norm="layernorm",
    head="classifier",
)
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (TIMM, OFFICIAL, HF)}


def get_layout(layout: str | Layout) -> Layout:
  """The table of `layout` (a name from LAYOUTS, or the table itself)."""
  return layout if isinstance(layout, Layout) else LAYOUTS[layout]


def detect_layout(keys: Sequence[str]) -> tuple[str, str]:
  """(layout name, prefix) of a state dict's keys, read off the stem key. The prefix is one of
  the layout's `prefixes` ('focalnet.' for HF, 'backbone.' for an mmdet detector) when present,
  else the shortest dotted prefix found before a stem key (e.g. 'backbone.0.'), else ''."""
  keys = set(keys)
  for layout in LAYOUTS.values():
    for prefix in layout.prefixes:
      if prefix + layout.stem_key in keys:
        return layout.name, prefix
  for layout in LAYOUTS.values():
    found = sorted((k[: -len(layout.stem_key)] for k in keys if k.endswith("." + layout.stem_key)), key=len)
    if found:
      return layout.name, found[0]
  prefixes = collections.Counter(
      ".".join(k.split(".")[:2]) if k.startswith("focalnet.") else k.split(".")[0] for k in keys
  )
  seen = ", ".join(f"{p!r} ({n})" for p, n in prefixes.most_common(12)) or "none (empty state dict)"
  stems = ", ".join(f"{l.prefixes[0] + l.stem_key!r} ({l.source})" for l in LAYOUTS.values())
  raise ValueError(
      f"Unknown checkpoint layout: found none of the stem keys {stems}. "
      f"Key prefixes seen (count): {seen}. Is this a FocalNet classification or detection checkpoint?"
  )


def torch_key(path: tuple[str, ...], layout: str | Layout, *, postln: bool = False, prefix: str = "") -> str:
  """The state-dict key that our param at `path` (e.g. ('layers_0', 'blocks_1', 'mlp', 'fc1',
  'kernel')) comes from in `layout`. `postln` matters only where post-norms have their own
  names (timm's `norm1_post`). A backbone's `norm{i}` is the official detection backbone's
  `norm{i}` in every layout (only official detection checkpoints have them)."""
  table = get_layout(layout)
  first, *rest = path
  if first == "patch_embed":
    sub, leaf = rest
    return f"{prefix}{table.stem[sub]}.{_LEAF[leaf]}"
  if first == "norm":
    return f"{prefix}{table.final_norm}.{_LEAF[rest[0]]}"
  if first == "head":
    return table.head_key(_LEAF[rest[0]])
  if re.fullmatch(r"norm\d+", first):  # a backbone's output norm
    return f"{prefix}{table.output_norm.format(i=int(first[4:]))}.{_LEAF[rest[0]]}"
  i = int(first.split("_")[1])
  if rest[0] == "downsample":
    sub, leaf = rest[1:]
    sub = table.downsample_renames.get(sub, sub)
    return prefix + table.downsample.format(i=i + table.downsample_stage_offset, sub=sub) + f".{_LEAF[leaf]}"
  block = table.block_module(i, int(rest[0].split("_")[1]), prefix)
  return f"{block}.{_block_param(rest[1:], table, postln)}"


def _block_param(inner: Sequence[str], table: Layout, postln: bool) -> str:
  """A parameter's key relative to its block, from our path inside the block."""
  part = inner[0]
  if part in ("gamma_1", "gamma_2"):
    return table.layerscale.format(n=part[-1])
  if part == "modulation" and inner[1].startswith("focal_layers_"):
    return f"modulation.focal_layers.{int(inner[1].rsplit('_', 1)[1])}.0.weight"
  sub, leaf = inner[-2:]
  if part == "modulation":
    return f"modulation.{table.modulation_module(sub)}.{_LEAF[leaf]}"
  if part == "mlp":
    return f"mlp.{sub}.{_LEAF[leaf]}"
  norm = table.post_norm.format(n=part[-1]) if postln and table.post_norm else part  # norm1 / norm2
  return f"{norm}.{_LEAF[leaf]}"
