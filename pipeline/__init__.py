"""The data library: dataset manifests, download, crop, shards, `prepare` and `verify`; on core/.

Their command lines are stages/prepare.py and stages/verify.py, on top of every layer.
"""
