"""The training and test images: `sources` (where each dataset's files are and how they decode, as
random-access lists), `pipeline` (the order, the shards per host, the batches and the decoding workers) and
`reservoir` (a uniform sample of a stream, for subsets of a dataset).

Imports nothing: the decoding worker processes import `sources`, which must not bring JAX with it."""
