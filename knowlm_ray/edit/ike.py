"""IKE: in-context knowledge editing (Zheng et al. 2023) as a prompt option, no weight change.

The new fact goes into the prompt, after demonstrations of facts being restated, in EasyEdit's
shape: ``New Fact: {prompt} {target}\nPrompt: {prompt} {target}\n\n`` per demonstration, then
``New Fact: {prompt} {target_new}\nPrompt: `` and the question. The demonstrations are the other
requests of the same file (EasyEdit retrieves them from a training set by similarity). It costs
nothing but a longer prompt; it works only on a model that can follow a demonstration.
"""

from __future__ import annotations

from collections.abc import Callable


def ike_prompter(requests, k: int = 4) -> Callable:
    """``fn(request, prompt) -> prompt`` with ``k`` demonstrations from the other requests."""

    def fn(request, prompt: str) -> str:
        demos = [r for r in requests if r is not request][:k]
        head = "".join(f"New Fact: {d.prompt} {d.target_new}\nPrompt: {d.prompt} {d.target_new}\n\n" for d in demos)
        return f"{head}New Fact: {request.prompt} {request.target_new}\nPrompt: {prompt}"

    return fn
