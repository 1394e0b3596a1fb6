"""How the network's ops run on each backend: depthwise-conv implementations, the compiled CPU
kernels (`native`, `csrc/`) and their build."""
