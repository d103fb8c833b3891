"""Knowledge editing (EasyEdit's pillar): ROME, MEMIT and FT-L on LLaMA-family models, the key
statistics they read (a Ray Data job), EasyEdit's metrics, and edits saved as small deltas."""
