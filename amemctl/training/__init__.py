"""Training loops: SimCLR encoders, autoencoders, hetero-encoders, dense associative memories."""
