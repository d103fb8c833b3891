"""Serving: ``engine`` (transformers + peft adapters, no Ray), ``continuous`` (continuous
batching over the engine: a decoding thread, KV-cache surgery, no Ray), ``runner`` (admission, deadlines,
cancellation, streaming; asyncio, no Ray), ``schemas`` (/generate and OpenAI bodies),
``openai_api`` (chat rendering, response/SSE bodies), ``metrics`` (Prometheus metrics, auth
middleware), ``app`` (the Ray Serve deployment and ``build_app`` for ``serve run``), ``launch``
(start/stop/serve_blocking).

Submodules are imported on use: ``import knowlm_ray.serve`` must not pull in Ray or torch.
"""
