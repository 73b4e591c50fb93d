"""Data stages: dataset manifests, download, crop, shards, `prepare` and `verify`; on core/.

The command line (`cli`) and `run all` (`run_all`) sit on top of every layer.
"""
