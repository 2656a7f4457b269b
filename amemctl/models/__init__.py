"""Neural networks used as encoders (phi) and decoders (psi), and their checkpoints."""
