"""Serving: ``engine`` (transformers, no Ray), ``schemas`` (the /generate API), ``app`` (the Ray Serve
deployment and ``build_app`` for ``serve run``), ``launch`` (start/stop/serve_blocking).

Submodules are imported on use: ``import knowlm_ray.serve`` must not pull in Ray or torch.
"""
