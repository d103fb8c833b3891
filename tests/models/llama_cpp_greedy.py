"""Greedy decoding with llama.cpp (llama-cpp-python), run by any interpreter that has llama_cpp.

    python llama_cpp_greedy.py '{"model": "m.gguf", "prompt_ids": [1, 5, 9], "n": 8}'
prints {"tokens": [...], "logits": [[...] per prompt position]} as JSON. The GGUF test uses it
in-process when llama_cpp imports, else with $KNOWLM_LLAMA_CPP_PYTHON (a separate venv).
"""

import json
import sys


def greedy(model: str, prompt_ids: list[int], n: int, lora: str | None = None) -> dict:
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(
        model_path=model, n_ctx=256, n_threads=1, n_batch=64, logits_all=True, verbose=False, seed=0, lora_path=lora
    )
    llm.eval(prompt_ids)
    logits = np.asarray(llm.scores[: len(prompt_ids)], dtype=np.float64)
    tokens = []
    for _ in range(n):  # argmax decoding on llama.cpp's own logits
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(nxt)
        llm.eval([nxt])
    return {"tokens": tokens, "logits": logits.tolist()}


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    print(json.dumps(greedy(args["model"], args["prompt_ids"], args["n"], args.get("lora"))))
