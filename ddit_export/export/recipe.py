"""Recipes: YAML files holding an export's settings (`ddit-export flux --recipe recipes/flux-dev-1024.yaml`).

Keys are the names of `ExportRequest` fields (`patch_sizes`, `height`, `dtype`, ...) plus `family`
and an optional `scheduler: {tau, rho}` block (the engines' default schedule). Flags given on the
command line override the recipe.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from .request import ExportRequest

NOT_IN_RECIPES = {"out", "force", "skip_resource_check"}  # where, whether to overwrite, the host: the caller's business
LEGACY_KEYS = {"backends": "artifacts"}  # recipes written before the artifact kinds had their own name


def recipe_keys() -> list[str]:
    return sorted(f.name for f in dataclasses.fields(ExportRequest) if f.name not in NOT_IN_RECIPES)


def load_recipe(path, family: str) -> dict:
    """ExportRequest keyword arguments from a recipe file, checked against the command's family."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ValueError(f"recipe {path} is not UTF-8 text (a binary file?); recipes are YAML") from None
    except yaml.YAMLError as err:
        raise ValueError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a mapping of settings")
    data = dict(data)
    recipe_family = data.pop("family", family)
    if recipe_family != family:
        raise ValueError(f"recipe {path} is for `ddit-export {recipe_family}`, not `{family}`")
    data.pop("description", None)
    scheduler = data.pop("scheduler", None) or {}
    if not isinstance(scheduler, dict):
        raise ValueError(f"recipe {path}: 'scheduler' must be a mapping like {{tau: 0.001, rho: 0.4}}")
    data.update({k: scheduler[k] for k in ("tau", "rho") if k in scheduler})
    for old, new in LEGACY_KEYS.items():
        if old in data:
            if new in data:
                raise ValueError(f"recipe {path} gives both '{old}' and '{new}' (the same setting): keep '{new}'")
            data[new] = data.pop(old)
    unknown = sorted(set(data) - set(recipe_keys()))
    if unknown:
        raise ValueError(f"recipe {path} has unknown key(s) {unknown}; known: {', '.join(recipe_keys())}")
    for key in ("patch_sizes", "artifacts"):
        if key in data and isinstance(data[key], str):
            data[key] = [part.strip() for part in data[key].split(",")]
    for key, value in data.items():
        _check_type(path, key, value)
    if "patch_sizes" in data:
        data["patch_sizes"] = tuple(int(p) for p in data["patch_sizes"])
    if "artifacts" in data:
        data["artifacts"] = tuple(data["artifacts"])
    return data


def _check_type(path: Path, key: str, value) -> None:
    """A recipe value of the field's type (YAML reads `height: 1024px` as a string), or one line naming it."""
    annotation = next(f.type for f in dataclasses.fields(ExportRequest) if f.name == key)
    if value is None and "None" in annotation:
        return
    if annotation.startswith("tuple"):
        item = int if "int" in annotation else str
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, item) or (item is int and str(v).isdigit())
                                                      for v in value)
        expected = f"a list of {item.__name__}s"
    else:
        kinds = {"bool": bool, "int": int, "float": (int, float), "str": str}
        kind = next(k for name, k in kinds.items() if annotation.startswith(name))
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        expected = annotation.split(" |")[0]
    if not ok:
        raise ValueError(f"recipe {path}: '{key}' must be {expected} (got {value!r})")
