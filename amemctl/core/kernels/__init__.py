"""GPU kernels (Triton) behind the plain torch functions; used only where they are faster."""
