"""The jaxtyping shapes of the public API, named once (``tests/test_validation_layer.py``
keeps each checked function's annotations equal to its ``@checked`` specs).

Dimensions: ``m`` prompts, ``K`` completions a prompt, ``d`` features, ``E`` candidate
edges (comparisons)."""

from __future__ import annotations

from jaxtyping import ArrayLike, Float, Real

__all__ = ["Vector", "Scalar", "Features", "LogRef", "Diffs", "EdgeWeights", "PromptWeights"]

Vector = Float[ArrayLike, " d"]  #: a parameter ``theta`` (or ``theta*``)
Scalar = Real[ArrayLike, ""]  #: ``beta``, ``n``, a ridge
Features = Float[ArrayLike, "m K d"]  #: ``phi(x, y)`` of the pool
LogRef = Float[ArrayLike, "m K"]  #: ``log pi0(y|x)`` (``-inf`` where a completion is absent)
Diffs = Float[ArrayLike, "E d"]  #: the candidate edges' feature differences ``z_e``
EdgeWeights = Float[ArrayLike, " E"]  #: a design ``w``
PromptWeights = Float[ArrayLike, " m"] | None  #: ``rho(x)``; ``None``: uniform over prompts
