"""Training on Ray Train V2: one loop (``loop.py``) behind pretraining (``pretrain.py``) and LoRA
(``lora.py``).

    deepspeed_presets  zero3 (KnowLM's block) / zero2 / ddp dicts + precision, offload, clipping and
                       optimizer switches, filled from the config, validated by DeepSpeed on the driver
    data               memory-mapped Arrow shards, tokenized records, resumable rank / source-mixing
                       samplers, collate with per-document positions for packed rows
    engine             DeepSpeed and torch (DDP / single-process) engines behind one interface
    schedule           linear warmup + cosine learning rate
    checkpoint         train_state.json (step, sampler position) and resume compatibility
    metrics            output_dir/metrics.jsonl (+ TensorBoard), cut back to the checkpoint step on resume
    export             final HF model / peft adapter dir: staged, checked non-empty, swapped in
"""
