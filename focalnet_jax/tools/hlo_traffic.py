"""Kernels and device-memory traffic of a compiled XLA program, read from its optimized HLO text.

FocalNet is memory-bound on a GPU: what a step costs is mostly the bytes its kernels move. XLA's
own cost analysis is not available when a program is compiled for a GPU that is not attached
(`focalnet_jax.tools.aot`), but the optimized HLO is: after fusion every instruction of a
computation that is not bookkeeping (parameters, tuples, bitcasts, ...) is one kernel launch,
and the kernel reads its operands and writes its result from and to device memory. So a step's
traffic is estimated as the sum over kernels of (operand bytes + result bytes), with loop bodies
counted as often as XLA's `known_trip_count` says. It ignores caches (an operand two kernels read
counts twice) and counts a kernel that reads part of an operand (a slice) as reading all of it:
a model of the traffic, to compare implementations, not a measurement.
"""
from __future__ import annotations

import collections
import dataclasses
import re

# Bytes per element of each HLO element type (s4/u4 pack two per byte).
_ELEMENT_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                  "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9](?:fn|fnuz|b11fnuz)?)?)\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLED = re.compile(r"\b(calls|body|condition|to_apply|branch_computations|called_computations)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"([0-9]+)"\}')
_CUSTOM_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_FUSION_KIND = re.compile(r'"kind":"([^"]+)"')

# Instructions that launch no kernel of their own.
_BOOKKEEPING = frozenset({"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
                          "opt-barrier", "add-dependency", "partition-id", "replica-id",
                          "async-done", "copy-done", "send-done", "recv-done", "domain"})
# Instructions whose work is in the computations they call.
_CONTROL = frozenset({"while", "call", "conditional", "async-start", "async-update"})


def element_bytes(shape: str) -> float:
  """Bytes of an HLO shape string: an array `bf16[2,3]{1,0}` or a tuple of them."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _ELEMENT_BYTES.get(dtype, 1 if dtype.startswith("f8") else 0)
  return total


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  shape: str
  opcode: str
  operands: tuple[str, ...]
  attributes: str

  def called(self) -> list[tuple[str, str]]:
    """(attribute, computation name) of every computation this instruction calls."""
    out = []
    for attr, value in _CALLED.findall(self.attributes):
      out += [(attr, n.strip().lstrip("%")) for n in value.strip("{}").split(",") if n.strip()]
    return out


def _split_balanced(text: str) -> tuple[str, str]:
  """(inside, after) for text that starts with '(': the balanced group's contents and the rest."""
  depth = 0
  for i, ch in enumerate(text):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      return text[1:i], text[i + 1:]
  return text[1:], ""


def _parse_instruction(line: str) -> Instruction | None:
  m = _INSTRUCTION.match(line)
  if not m:
    return None
  name, rest = m.group(1), m.group(2)
  if rest.startswith("("):  # a tuple shape
    inside, rest = _split_balanced(rest)
    shape = f"({inside})"
  else:
    shape, _, rest = rest.partition(" ")
  rest = rest.lstrip()
  opcode, paren, rest = rest.partition("(")
  if not paren:
    return None
  args, attributes = _split_balanced("(" + rest)
  operands = tuple(a.split()[-1].lstrip("%") for a in _top_level_split(args) if a.strip())
  return Instruction(name, shape, opcode.strip(), operands, attributes)


def _top_level_split(text: str) -> list[str]:
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return parts


def parse(text: str) -> tuple[dict[str, list[Instruction]], str]:
  """(computation name -> its instructions, the entry computation's name) of an HLO module's text."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = "", None
  for line in text.splitlines():
    if current is None:
      m = _COMPUTATION.match(line)
      if m:
        current = computations.setdefault(m.group(2), [])
        entry = m.group(2) if m.group(1) else entry
    elif line.strip() == "}":
      current = None
    else:
      instr = _parse_instruction(line)
      if instr is not None:
        current.append(instr)
  if not entry:
    raise ValueError("No ENTRY computation in this HLO text.")
  return computations, entry


def kernel_kind(instr: Instruction) -> str:
  """What a kernel does, for the table: 'gemm', 'conv', 'loop fusion', 'custom-call ...', an opcode."""
  if instr.opcode == "custom-call":
    target = (_CUSTOM_TARGET.search(instr.attributes) or [None, "?"])[1]
    if "conv" in target.lower():
      return "conv"
    return "gemm" if "gemm" in target.lower() or "matmul" in target.lower() else f"custom-call {target}"
  if instr.opcode == "fusion":
    kind = re.search(r"kind=k(\w+)", instr.attributes)
    backend = _FUSION_KIND.search(instr.attributes)
    if backend and ("gemm" in backend.group(1) or "matmul" in backend.group(1)):
      return "gemm"
    if backend and "conv" in backend.group(1):
      return "conv"
    return f"{(kind.group(1) if kind else '').lower()} fusion".strip()
  return instr.opcode


def _result_bytes(instr: Instruction) -> float:
  """The result's bytes; a custom call's trailing u8 scratch buffer (cuDNN, cuBLAS workspace) excluded."""
  if instr.opcode == "custom-call" and instr.shape.startswith("("):
    arrays = _ARRAY.findall(instr.shape)
    if arrays and arrays[-1][0] == "u8":
      return element_bytes(instr.shape) - element_bytes(f"u8[{arrays[-1][1]}]")
  return element_bytes(instr.shape)


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One kernel of the program: its kind, how often one run launches it, the bytes each launch moves."""
  kind: str
  launches: float
  bytes: float
  op_name: str  # the JAX op it came from (XLA's metadata), e.g. 'jit(f)/FocalNet.../mlp/fc1/dot_general'


_OP_NAME = re.compile(r'op_name="([^"]*)"')


def kernels(text: str) -> list[Kernel]:
  """Every kernel of one run of the program in `text`, loop bodies counted by their trip count."""
  computations, entry = parse(text)
  found: list[Kernel] = []

  def cost(comp: str) -> float:
    return sum(element_bytes(i.shape) for i in computations.get(comp, []) if i.opcode not in _BOOKKEEPING)

  def walk(name: str, times: float) -> None:
    instrs = computations.get(name, [])
    by_name = {i.name: i for i in instrs}
    for instr in instrs:
      if instr.opcode in _BOOKKEEPING:
        continue
      if instr.opcode in _CONTROL:
        called = instr.called()
        if instr.opcode == "while":
          trips = _TRIP_COUNT.search(instr.attributes)
          n = times * (int(trips.group(1)) if trips else 1)
          for attr, comp in called:
            walk(comp, n + (times if attr == "condition" else 0))
        elif instr.opcode == "conditional":  # one branch runs: count the costliest
          if called:
            walk(max((cost(comp), comp) for _, comp in called)[1], times)
        else:
          for _, comp in called:
            walk(comp, times)
        continue
      operand_bytes = sum(_result_bytes(by_name[o]) for o in instr.operands if o in by_name)
      op_name = _OP_NAME.search(instr.attributes)
      found.append(Kernel(kernel_kind(instr), times, operand_bytes + _result_bytes(instr),
                          op_name.group(1) if op_name else ""))

  walk(entry, 1.0)
  return found


def _totals(found: list[Kernel], key) -> dict[str, tuple[float, float]]:
  """key(kernel) -> (launches, bytes read + written), summed over `found`."""
  totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
  for k in found:
    entry = totals[key(k)]
    entry[0] += k.launches
    entry[1] += k.launches * k.bytes
  return {name: (n, b) for name, (n, b) in totals.items()}


def kernel_traffic(found: list[Kernel]) -> dict[str, tuple[float, float]]:
  """kind -> (launches, bytes read + written) of `kernels(text)`."""
  return _totals(found, lambda k: k.kind)


def scope(op_name: str) -> str:
  """Where a kernel comes from: 'forward'/'backward' and the model's module path without indices,
  e.g. 'backward blocks/mlp/fc1'; the optimizer and other non-model work as 'other'."""
  direction = "backward" if "transpose(" in op_name else "forward"
  parts = [p for p in op_name.split("/") if p]
  if not any(p.startswith("FocalNet") for p in parts):
    return "other (optimizer, mixup, loss)"
  path = [re.sub(r"_\d+$", "", p) for p in parts[1:-1] if not p.startswith(("jit(", "jvp(", "transpose(", "FocalNet"))]
  path = [p for p in path if p != "layers" and "->" not in p]  # no einsum specs
  return f"{direction} {'/'.join(path[-3:]) or 'FocalNet'}"


def traffic_by_scope(found: list[Kernel]) -> list[tuple[str, float, float]]:
  """(scope, launches, bytes) of `kernels(text)` per `scope`, most bytes first."""
  totals = _totals(found, lambda k: scope(k.op_name))
  return sorted(((name, n, b) for name, (n, b) in totals.items()), key=lambda r: -r[2])
