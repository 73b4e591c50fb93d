"""The golden files' weight recipe (../shared/reference/README.md, "Weight recipe"), for tests.

Tensor i (0-based, every key counted) of module m is drawn from a generator seeded
seed * 100003 + 10007 * m + i, by the first rule whose fnmatch pattern matches
'<module>.<key>' (and whose ndim condition holds). `state_sha256` is the digest the
files store per module: key, str(tuple(shape)) and the raw bytes of every entry in order.
"""
from __future__ import annotations

import fnmatch
import hashlib
import math

import torch


def _applies(rule: dict, name: str, shape: tuple) -> bool:
    ndim = rule.get("ndim")
    fits = ndim is None or (len(shape) >= 2 if ndim == ">=2" else len(shape) == int(ndim))
    return fits and fnmatch.fnmatchcase(name, rule["pattern"])


def _draw(rule: dict, shape: tuple, dtype: str, kept, generator: torch.Generator) -> torch.Tensor:
    def randn():
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    kind = rule["kind"]
    if kind == "keep":
        if dtype == "int64":
            return torch.zeros(shape, dtype=torch.int64)
        assert kept is not None, f"rule 'keep' for a {dtype} tensor needs the file's kept values"
        return kept
    if kind == "normal":
        return rule["mean"] + rule["std"] * randn()
    if kind == "uniform":
        return rule["low"] + (rule["high"] - rule["low"]) * torch.rand(shape, generator=generator,
                                                                       dtype=torch.float64)
    if kind == "unit_normal":
        vector = randn()
        return vector / vector.norm()
    if kind == "tile_normal":
        tile = torch.tensor(rule["tile"], dtype=torch.float64)
        return tile.repeat(math.prod(shape) // len(rule["tile"])).view(shape) + rule["std"] * randn()
    if kind == "fan_in_normal":
        gain = torch.full((shape[0],) + (1,) * (len(shape) - 1), float(rule["gain"]), dtype=torch.float64)
        if rule.get("tail_rows"):
            gain[-rule["tail_rows"]:] = rule["tail_gain"]
        # gain * (randn / sqrt(fan_in)), in this order: the digest sees every rounding
        return gain * (randn() / math.sqrt(math.prod(shape[1:])))
    raise AssertionError(f"unknown recipe rule kind {kind!r}")


def rebuild(recipe: dict, layout: list, kept: dict | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{module: state dict} from a file's `recipe` and `layout` ((module, key, shape, dtype)
    rows); `kept` {module: {key: tensor}} supplies float tensors a 'keep' rule leaves as stored."""
    out = {module: {} for module in recipe["modules"]}
    for module, key, shape, dtype in layout:
        m, i, shape = recipe["modules"].index(module), len(out[module]), tuple(shape)
        rule = next(r for r in recipe["rules"] if _applies(r, f"{module}.{key}", shape))
        generator = torch.Generator().manual_seed(recipe["seed"] * 100003 + 10007 * m + i)
        out[module][key] = _draw(rule, shape, dtype, (kept or {}).get(module, {}).get(key), generator)
    return out


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key, tensor in state.items():
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()
