"""Use cases: the product rules. The only layer that combines storage, training and inference."""
