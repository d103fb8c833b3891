"""What each generator asks the endpoint, and how its answer is read (EasyInstruct's generators).

The prompt texts are the published ones, word for word, because the models these recipes were
tuned on were asked in them: Self-Instruct's "Come up with a series of tasks:" with numbered seed
instructions (Wang et al. 2022, ``bootstrap_instructions.py``), WizardLM's Evol-Instruct rewrite
prompts (one in-breadth, four in-depth), and Humpback's self-augmentation prompt for
backtranslation (Li et al. 2023), as EasyInstruct ships them. Plain functions: no HTTP here.
"""

from __future__ import annotations

import re
import string

# ---------------------------------------------------------------------------- Self-Instruct
SELF_INSTRUCT_HEADER = "Come up with a series of tasks:\n"

# Self-Instruct's filter: tasks a text-only model cannot do.
_UNSUITABLE = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "program",
)
_UNSUITABLE_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in _UNSUITABLE) + r")\b", re.IGNORECASE)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def self_instruct_prompt(instructions: list[str]) -> str:
    """Numbered seed instructions, then the next number for the model to continue."""
    lines = [SELF_INSTRUCT_HEADER]
    for i, inst in enumerate(instructions, 1):
        one_line = re.sub(r"\s+", " ", inst).strip().rstrip(":")
        lines.append(f"{i}. {one_line}\n")
    lines.append(f"{len(instructions) + 1}.")
    return "".join(lines)


def _words(text: str) -> int:
    """Words for the length rule; a CJK character counts as one (Self-Instruct split on spaces)."""
    return len(_CJK.findall(text)) + len(_CJK.sub(" ", text).split())


def parse_self_instruct(text: str, truncated: bool) -> tuple[list[str], dict[str, int]]:
    """The new instructions in a continuation of ``self_instruct_prompt``, and how many were
    filtered out and why. The first item is the continuation of the open number; a truncated
    answer (finish_reason length) loses its last, cut-off item."""
    items = re.split(r"\n\d+\s?\.\s", "\n1. " + text.lstrip()) if text.strip() else []
    items = [re.sub(r"\s+", " ", it).strip() for it in items]
    items = [it for it in items if it]
    dropped: dict[str, int] = {}
    if truncated and items:
        items.pop()
        dropped["truncated"] = 1
    kept = []
    for inst in items:
        inst = inst[:1].upper() + inst[1:]
        why = None
        n = _words(inst)
        if n <= 3 or n > 150:
            why = "length"
        elif _UNSUITABLE_RE.search(inst) or inst.startswith("Write a program"):
            why = "unsuitable"
        elif inst[0] in string.punctuation:
            why = "punctuation"
        if why:
            dropped[why] = dropped.get(why, 0) + 1
        else:
            kept.append(inst)
    return kept, dropped


# ---------------------------------------------------------------------------- Evol-Instruct
# (a "\x20" is a trailing space of the published prompt, kept)
_BREADTH = """I want you act as a Prompt Creator.
Your goal is to draw inspiration from the #Given Prompt# to create a brand new prompt.
This new prompt should belong to the same domain as the #Given Prompt# but be even more rare.
The LENGTH and complexity of the #Created Prompt# should be similar to that of the #Given Prompt#.
The #Created Prompt# must be reasonable and must be understood and responded by humans."""

_DEPTH = """I want you act as a Prompt Rewriter.
Your objective is to rewrite a given prompt into a more complex version to make those famous AI systems (e.g., chatgpt and GPT4) a bit harder to handle.
But the rewritten prompt must be reasonable and must be understood and responded by humans.
Your rewriting cannot omit the non-text parts such as the table and code in #The Given Prompt#:. Also, please do not omit the input in #The Given Prompt#.
You SHOULD complicate the given prompt using the following method:\x20
{}
You should try your best not to make the #Rewritten Prompt# become verbose, #Rewritten Prompt# can only add 10 to 20 words into #The Given Prompt#."""

_DEPTH_METHODS = {
    "constraints": "Please add one more constraints/requirements into #The Given Prompt#'",
    "deepen": "If #The Given Prompt# contains inquiries about certain issues, the depth and breadth of the inquiry can be increased.",
    "concretizing": "Please replace general concepts with more specific concepts.",
    "reasoning": "If #The Given Prompt# can be solved with just a few simple thinking processes, you can rewrite it to explicitly request multiple-step reasoning.",
}
EVOLUTIONS = ("breadth", *_DEPTH_METHODS)

# An answer that talks about the prompt instead of being one (WizardLM's elimination rule).
_EVOL_LEAK = re.compile(r"given prompt|created prompt|rewritten prompt", re.IGNORECASE)


def evol_prompt(kind: str, instruction: str) -> str:
    if kind == "breadth":
        return _BREADTH + f"#Given Prompt#: \r\n {instruction} \r\n" + "#Created Prompt#:\r\n"
    return (
        _DEPTH.format(_DEPTH_METHODS[kind]) + f"#The Given Prompt#: \r\n {instruction} \r\n" + "#Rewritten Prompt#:\r\n"
    )


def parse_evol(text: str, original: str) -> tuple[str | None, str | None]:
    """(the evolved instruction, None) or (None, why it is dropped)."""
    out = text.strip()
    if not out:
        return None, "empty"
    if _EVOL_LEAK.search(out):
        return None, "leak"
    if re.sub(r"\s+", " ", out) == re.sub(r"\s+", " ", original.strip()):
        return None, "unchanged"
    return out, None


# ---------------------------------------------------------------------------- backtranslation
BACKTRANSLATION_PROMPT = """This is a chat between a curious user and a helpful artificial intelligence assistant.

Given the assistant's reponse, please try to predict the user's instruction. Please avoid giving uncertain instruction.\x20

RESPONSE: 1. Werewolf 2. Who Am I?  3. Charades 4. Balderdash 5. Pictionary 6. Two Truths and a Lie 7. Uno 8. Story Starters 9. Truth or Dare 10. Kubb

INSTRUCTION: Suggest some games that can be played by a group of people.

RESPONSE: The observer effect in quantum mechanics refers to the impact of measurement on a quantum system.  In quantum computing, qubits exist in superpositions of states until measured.  Measurement collapses the qubits into definite states, affecting the outcome.  This phenomenon introduces the need for quantum algorithms to be carefully designed to harness superposition and entanglement while minimizing the impact of measurement during computation.

INSTRUCTION: How does the phenomenon of an observer affect the way quantum computers process data?

RESPONSE:"""


def backtranslation_prompt(text: str) -> str:
    return f"{BACKTRANSLATION_PROMPT} {text}"


def parse_backtranslation(text: str) -> tuple[str | None, str | None]:
    """The instruction after ``INSTRUCTION:`` (the whole answer when the model wrote only it),
    up to a next ``RESPONSE:`` the model may go on to invent."""
    out = text.split("INSTRUCTION:", 1)[1] if "INSTRUCTION:" in text else text
    out = out.split("RESPONSE:", 1)[0].strip()
    return (out, None) if out else (None, "empty")


# Humpback's self-curation (EasyInstruct's BacktranslationGenerator.self_curation): the endpoint
# rates each (instruction, text) pair on a 5-point scale and ends with "Score: <rating>".
SELF_CURATION_PROMPT = """Below is an instruction from an user and a candidate answer. Evaluate whether or not the answer is a good example of how AI Assistant should respond to the user's instruction. Please assign a score using the following 5-point scale:
1: It means the answer is incomplete, vague, off-topic, controversial, or not exactly what the user asked for. For example, some content seems missing, numbered list does not start from the beginning, the opening sentence repeats user's question. Or the response is from another person's perspective with their personal experience (e.g. taken from blog posts), or looks like an answer from a forum. Or it contains promotional text, navigation text, or other irrelevant information.
2: It means the answer addresses most of the asks from the user. It does not directly address the user's question. For example, it only provides a high-level methodology instead of the exact solution to user's question.
3: It means the answer is helpful but not written by an AI Assistant. It addresses all the basic asks from the user. It is complete and self contained with the drawback that the response is not written from an AI assistant's perspective, but from other people's perspective. The content looks like an excerpt from a blog post, web page, or web search results. For example, it contains personal experience or opinion, mentions comments section, or share on social media, etc.
4: It means the answer is written from an AI assistant's perspective with a clear focus of addressing the instruction. It provide a complete, clear, and comprehensive response to user's question or instruction without missing or irrelevant information. It is well organized, self-contained, and written in a helpful tone. It has minor room for improvement, e.g. more concise and focused.
5: It means it is a perfect answer from an AI Assistant. It has a clear focus on being a helpful AI Assistant, where the response looks like intentionally written to address the user's question or instruction without any irrelevant sentences. The answer provides high quality content, demonstrating expert knowledge in the area, is very well written, logical, easy-to-follow, engaging and insightful.\x20

Please first provide a brief reasoning you used to derive the rating score, and then write "Score: <rating>" in the last line.

"""
_SCORE = re.compile(r"[Ss]core:\s*(\d+)")


def self_curation_prompt(instruction: str, text: str) -> str:
    return f"{SELF_CURATION_PROMPT}\n\nInstruction: {instruction}\n\n Response:{text}"


def parse_score(text: str) -> int | None:
    """The first ``Score: N`` of the rating, or None."""
    m = _SCORE.search(text)
    return int(m.group(1)) if m else None
