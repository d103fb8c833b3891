from __future__ import annotations

from knowlm_ray.edit.ike import ike_prompter
from knowlm_ray.edit.requests import EditRequest


def test_ike_prompt_is_easyedits_shape_with_the_other_requests_as_demonstrations():
    a = EditRequest(prompt="Ann Lee was born in", subject="Ann Lee", target_new="Oslo")
    b = EditRequest(prompt="Bo Kim works as a", subject="Bo Kim", target_new="pilot")
    prompt = ike_prompter([a, b])(a, "The birthplace of Ann Lee is")
    assert prompt == (
        "New Fact: Bo Kim works as a pilot\nPrompt: Bo Kim works as a pilot\n\n"
        "New Fact: Ann Lee was born in Oslo\nPrompt: The birthplace of Ann Lee is"
    )
