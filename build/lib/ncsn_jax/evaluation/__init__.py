"""Sample-quality measurement: feature extractors (FID Inception-v3, a digit classifier) and the metrics
computed on their features (Fréchet distance, Inception Score, KID)."""
