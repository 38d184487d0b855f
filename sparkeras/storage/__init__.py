"""Where sparkeras writes: output checks, atomic writes, and per-epoch checkpoints."""
