"""WebDataset shards with a parquet sidecar per tar: reading, writing, layout and built-in datasets."""
