"""World registry shared by the Hydra apps (quick start and sweep)."""

from __future__ import annotations

import inspect

from omegaconf import DictConfig, OmegaConf

import synthetic
from theory.checked import check_argument, one_of

WORLDS = {
    "tabular": synthetic.tabular_world,
    "contextual": synthetic.contextual_world,
    "gaussian": synthetic.gaussian_world,
}


def check_world_config(world_cfg: DictConfig) -> None:
    """``world.name`` is known and ``world.params`` are parameters of its constructor."""
    check_argument("world.name", world_cfg.name, one_of(sorted(WORLDS)), config=True)
    allowed = sorted(set(inspect.signature(WORLDS[world_cfg.name]).parameters) - {"key", "dtype"})
    for p in world_cfg.params:
        if p not in allowed:
            raise ValueError(f"world.params.{p} is not a parameter of the {world_cfg.name} world; allowed: {allowed}")
    extra = sorted(set(world_cfg) - {"name", "params", "keep_completions"})
    if extra:
        raise ValueError(f"world.{extra[0]} is not a world key; allowed: ['keep_completions', 'name', 'params']")
    check_argument("world.keep_completions", world_cfg.get("keep_completions"), "optional int >= 2", config=True)


def make_world(world_cfg: DictConfig, key):
    """Build the configured world (its constructor checks the parameter values).

    ``world.keep_completions = k`` cuts every pool to its first ``k`` completions
    (:func:`synthetic.first_completions`), so worlds of different ``k`` are nested.
    """
    world = WORLDS[world_cfg.name](key, **OmegaConf.to_container(world_cfg.params, resolve=True))
    keep = world_cfg.get("keep_completions")
    return world if keep is None else synthetic.first_completions(world, keep)
