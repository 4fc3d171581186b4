"""The official PyTorch NCSNv2 weights (ermongroup/ncsnv2) without torch: `torch_files` reads a
`torch.save` file with NumPy, `convert` renames and transposes its tensors into Flax parameters."""
