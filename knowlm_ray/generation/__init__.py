"""Generation: a model answering prompts, in plain Python (no Ray, no HTTP).

    params      GenerationParams (decoding parameters) and GenerateRequest (an alpaca
                instruction + input + parameters), the engine's request types
    errors      what a request can get wrong: RequestError (with its machine-readable ``code``),
                UnknownModelError
    engine      GenerationEngine: transformers + peft adapters, grouped left-padded batches
    continuous  ContinuousBatcher: continuous batching over the engine (a decoding thread)
    chat        chat messages rendered into KnowLM's alpaca prompt (``render_chat``)

``knowlm_ray.serve`` puts this behind HTTP and Ray Serve; extraction (``knowlm_ray.ie``), the
clients and the batch jobs use it in-process. Nothing is imported here, and nothing in this
package imports Ray, fastapi/starlette/uvicorn or ``knowlm_ray.serve`` (an import-linter
contract in pyproject.toml checks it).
"""
