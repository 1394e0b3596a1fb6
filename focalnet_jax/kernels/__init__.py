"""How the model's ops run on each backend, as leaves under `model/`: they import nothing from it.

- `depthwise`: the depthwise conv of the focal levels ('xla', 'shift', 'native': the compiled CPU
  kernels of `csrc/`, built and loaded by `native`).
- `patch_conv`: the stem's and downsamplings' strided patch convolutions as one matmul.
- `aligned_projection`: `f`'s matmul writing q, Z^0 and the gates at aligned channel offsets.
- `chunking`: inference over chunks of the batch, stage by stage (cache-sized on CPU).
- `remat`: what each block keeps for the backward pass.
- `activations`: the exact GELU the model and the kernels share.
- `mosaic/`: Mosaic GPU kernels for the focal levels (jax >= 0.11; interpreted on CPU, never yet run
  on a GPU), behind one door (`kernels.mosaic`).
Which of these a model runs is its execution (docs/execution.md); what it computes is `model/`.
"""
